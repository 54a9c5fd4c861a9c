"""Chat admission on a real event loop: how many chats start per turn, in which order, and
which are turned away."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from service.admission import ChatAdmission, ChatOverloaded


class TurnCounter:
    """Counts turns of the running loop: a callback that schedules itself once per turn."""

    def __init__(self) -> None:
        self.turn = 0
        self._running = True

    def start(self) -> None:
        asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        if self._running:
            self.turn += 1
            asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        self._running = False


async def _arrive_together(
    admission: ChatAdmission, count: int
) -> tuple[list[tuple[int, int]], list[BaseException], TurnCounter]:
    """``count`` chats reach the gate in the same turn; returns (arrival, turn) for each one
    let in, in the order they were let in, and the errors of the ones turned away."""
    turns = TurnCounter()
    admitted: list[tuple[int, int]] = []

    async def chat(n: int) -> None:
        await admission.enter()
        admitted.append((n, turns.turn))

    turns.start()
    results = await asyncio.gather(*(chat(n) for n in range(count)), return_exceptions=True)
    turns.stop()
    return admitted, [r for r in results if isinstance(r, BaseException)], turns


async def test_at_most_per_turn_chats_start_in_one_turn_in_order_of_arrival() -> None:
    admission = ChatAdmission(per_turn=2, max_waiting=100)
    admitted, errors, _ = await _arrive_together(admission, 7)
    assert errors == []
    assert [n for n, _ in admitted] == list(range(7))
    per_turn = Counter(turn for _, turn in admitted)
    assert max(per_turn.values()) == 2
    assert len(per_turn) == 4  # 2 + 2 + 2 + 1
    assert admission.waiting == 0


async def test_a_chat_beyond_the_line_is_turned_away_with_the_number_waiting() -> None:
    admission = ChatAdmission(per_turn=1, max_waiting=2)
    admitted, errors, _ = await _arrive_together(admission, 5)
    assert [n for n, _ in admitted] == [0, 1, 2]
    assert len(errors) == 2
    assert all(isinstance(e, ChatOverloaded) for e in errors)
    assert "2 chats are already waiting" in str(errors[0])
    assert "retry" in str(errors[0])
    assert admission.shed == 2


async def test_a_chat_that_finds_room_starts_without_yielding() -> None:
    admission = ChatAdmission(per_turn=2, max_waiting=10)
    first = admission.enter()
    with pytest.raises(StopIteration):  # finished in its first step: no turn was lost
        first.send(None)
    await asyncio.sleep(0)  # a new turn, a new allowance
    second = admission.enter()
    with pytest.raises(StopIteration):
        second.send(None)


async def test_no_limit_lets_every_chat_start_at_once() -> None:
    admission = ChatAdmission(per_turn=0, max_waiting=0)
    admitted, errors, _ = await _arrive_together(admission, 50)
    assert errors == []
    assert len({turn for _, turn in admitted}) == 1


async def test_a_chat_cancelled_in_line_leaves_it() -> None:
    admission = ChatAdmission(per_turn=1, max_waiting=1)
    first = asyncio.ensure_future(admission.enter())
    second = asyncio.ensure_future(admission.enter())
    await asyncio.sleep(0)  # both ran in one turn: the first took its place, the second waits
    assert first.done()
    assert not second.done()
    assert admission.waiting == 1
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert admission.waiting == 0
    # The line is free again: two chats arriving together both get in, none is turned away.
    admitted, errors, _ = await _arrive_together(admission, 2)
    assert errors == []
    assert len(admitted) == 2
    assert admission.shed == 0


def test_negative_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        ChatAdmission(per_turn=-1, max_waiting=0)
