"""Chat admission on a real event loop: how many chats start per turn, in which order, and
which are turned away."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from service.chat.admission import ChatAdmission, ChatOverloaded


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


async def test_a_chat_that_finds_room_starts_without_yielding() -> None:
    admission = ChatAdmission(per_turn=1, max_waiting=10)
    first = admission.enter()
    with pytest.raises(StopIteration):  # finished in its first step: no turn was lost
        first.send(None)
    blocked = admission.enter()
    blocked.send(None)  # the turn's place is taken: this one suspends
    blocked.close()
    await asyncio.sleep(0)  # a new turn, a new allowance
    second = admission.enter()
    with pytest.raises(StopIteration):
        second.send(None)


async def test_a_newcomer_does_not_start_ahead_of_a_chat_already_let_in() -> None:
    loop = asyncio.get_running_loop()
    admission = ChatAdmission(per_turn=2, max_waiting=100)
    order: list[int] = []

    async def chat(n: int) -> None:
        await admission.enter()
        order.append(n)

    tasks = [asyncio.ensure_future(chat(n)) for n in range(3)]  # 0 and 1 start, 2 waits
    # Chat 3 arrives in the turn in which 2 is let in, after it was let in.
    loop.call_soon(lambda: tasks.append(asyncio.ensure_future(chat(3))))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]


async def test_no_limit_lets_every_chat_start_at_once() -> None:
    admission = ChatAdmission(per_turn=0, max_waiting=0)
    admitted, errors, _ = await _arrive_together(admission, 50)
    assert errors == []
    assert len({turn for _, turn in admitted}) == 1


async def test_a_chat_cancelled_in_line_leaves_it() -> None:
    admission = ChatAdmission(per_turn=1, max_waiting=3)
    tasks = [asyncio.ensure_future(admission.enter()) for _ in range(4)]  # 0 starts, 3 wait
    await asyncio.sleep(0)
    assert admission.waiting == 3
    tasks[3].cancel()  # the last in line, which the next turn does not reach
    await asyncio.sleep(0)  # the next turn lets 1 in; 3 sees its cancellation
    assert admission.waiting == 1  # only 2 is left in line
    await asyncio.gather(*tasks, return_exceptions=True)
    assert tasks[3].cancelled()
    assert admission.waiting == 0
    # The line has room again: a fourth chat in a burst waits instead of being turned away.
    admitted, errors, _ = await _arrive_together(admission, 4)
    assert errors == []
    assert len(admitted) == 4


def test_the_message_counts_the_line_in_words() -> None:
    assert "(no chat may wait)" in str(ChatOverloaded(0))
    assert "(1 chat is already waiting to start)" in str(ChatOverloaded(1))
    assert "(3 chats are already waiting to start)" in str(ChatOverloaded(3))


def test_negative_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        ChatAdmission(per_turn=-1, max_waiting=0)
