"""The deadline watchdog: per-call timeouts with one timer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from service.errors import (
    HeldTheLoop,
    RaisedBaseException,
    StoreUnavailable,
    cut_waiting,
    note_cut_waiting,
)
from service.resilience.deadlines import DeadlineWatchdog


async def answers_at_once() -> str:
    return "done"


async def sleeps(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


async def fails_at_once() -> str:
    raise ValueError("bad input")


async def test_a_call_that_never_waits_needs_no_deadline() -> None:
    watchdog = DeadlineWatchdog()
    assert await watchdog.run(answers_at_once(), 0.01) == "done"
    assert watchdog.in_flight == 0


async def test_errors_of_the_first_step_pass_through() -> None:
    with pytest.raises(ValueError, match="bad input"):
        await DeadlineWatchdog().run(fails_at_once(), 1.0)


async def test_a_call_that_waits_finishes_within_its_deadline() -> None:
    watchdog = DeadlineWatchdog()
    assert await watchdog.run(sleeps(0.01), 1.0) == "slept"
    assert watchdog.in_flight == 0


async def test_an_overrunning_call_raises_timeout_error() -> None:
    watchdog = DeadlineWatchdog()
    with pytest.raises(TimeoutError, match="longer than 0.05 s"):
        await watchdog.run(sleeps(5), 0.05)
    assert watchdog.in_flight == 0
    # The task is usable afterwards: the cancellation was taken back.
    assert asyncio.current_task().cancelling() == 0
    assert await watchdog.run(sleeps(0.01), 1.0) == "slept"


async def test_many_calls_with_one_timer_each_cut_at_its_own_deadline() -> None:
    watchdog = DeadlineWatchdog()
    results = await asyncio.gather(
        *(watchdog.run(sleeps(0.3 if i % 2 else 0.01), 0.1) for i in range(10)),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results] == ["str", "TimeoutError"] * 5


async def test_an_outside_cancellation_is_not_a_timeout() -> None:
    watchdog = DeadlineWatchdog()
    task = asyncio.ensure_future(watchdog.run(sleeps(5), 10))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def waits_on_a_store(component: str, seconds: float = 5) -> str:
    """As a store's statement does when the database does not answer in time."""
    began = time.monotonic()
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        note_cut_waiting(component, began)
        raise
    return "read"


async def test_a_call_cut_while_it_waited_for_a_store_failed_for_the_store() -> None:
    watchdog = DeadlineWatchdog()
    with pytest.raises(StoreUnavailable, match="no answer within the call's time limit") as cut:
        await watchdog.run(waits_on_a_store("budgets"), 0.05)
    assert cut.value.component == "budgets"

    # A wait cut earlier in the task (a save given up on) is not this call's.
    note_cut_waiting("system_state", time.monotonic() - 10)
    with pytest.raises(TimeoutError):
        await watchdog.run(sleeps(5), 0.05)
    # Said once: the next call the task makes that overruns is its own timeout.
    with pytest.raises(TimeoutError):
        await watchdog.run(sleeps(5), 0.05)


async def test_an_outside_cancellation_of_a_store_wait_is_not_the_stores_failure() -> None:
    watchdog = DeadlineWatchdog()
    task = asyncio.ensure_future(watchdog.run(waits_on_a_store("budgets"), 10))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cut_waiting(task, 0.0, 0.0) is None  # nothing left behind for a later call


async def holds_the_loop(seconds: float, pause_first: bool) -> str:
    if pause_first:
        await asyncio.sleep(0)
    time.sleep(seconds)  # the agent's code blocking, as a synchronous client would
    return "held"


@pytest.mark.parametrize("pause_first", [False, True])
async def test_a_call_that_holds_the_loop_past_its_limit_is_no_success(pause_first: bool) -> None:
    """No timer can cut a step that never pauses: it answered, and counted as a success,
    however long every other request waited for it."""
    with pytest.raises(HeldTheLoop, match="held the event loop for 0.2 s without a pause"):
        await DeadlineWatchdog().run(holds_the_loop(0.2, pause_first), 0.05)


async def test_a_short_synchronous_step_within_the_limit_answers() -> None:
    assert await DeadlineWatchdog().run(holds_the_loop(0.01, True), 1.0) == "held"


async def test_the_call_around_one_that_held_the_loop_is_not_failed_for_it_too() -> None:
    """The router's call holds its agent's: it ran as long, but the agent's call failed for
    it and its fallback answered; failing the router too would isolate every intent."""
    watchdog = DeadlineWatchdog()

    async def router() -> str:
        try:
            return await watchdog.run(holds_the_loop(0.2, False), 0.05)
        except HeldTheLoop:
            return "fallback"

    assert await watchdog.run(router(), 0.1) == "fallback"
    # A later call of the same task that holds the loop is its own failure again.
    with pytest.raises(HeldTheLoop):
        await watchdog.run(holds_the_loop(0.2, False), 0.05)


async def cleans_up_then_lets_the_cancellation_go() -> str:
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        await asyncio.sleep(0)  # an async cleanup first, as an `async with` block's exit
        raise
    return "slept"


async def test_a_cancellation_passed_on_after_an_async_cleanup_is_still_a_timeout() -> None:
    """The cut reaches the call's code thrown in, and code that awaits its cleanup passes it
    on in a later step: taken for the agent's own CancelledError, every timeout of a call
    reading a store (whose connection goes back to its pool so) was an agent failure."""
    watchdog = DeadlineWatchdog()
    with pytest.raises(TimeoutError):
        await watchdog.run(cleans_up_then_lets_the_cancellation_go(), 0.05)
    assert asyncio.current_task().cancelling() == 0


async def works_then_reads(work_s: float) -> str:
    """An agent that spends most of its limit on its own work, then reads a healthy store."""
    await asyncio.sleep(work_s)
    return await waits_on_a_store("budgets", 0.02)


async def cuts_its_own_read_then_hangs() -> str:
    """An agent whose own timeout cuts a store read, which then hangs on something else."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.01):
            await waits_on_a_store("budgets")
    await asyncio.sleep(5)
    return "late"


@pytest.mark.parametrize("call", [lambda: works_then_reads(0.19), cuts_its_own_read_then_hangs])
async def test_a_timeout_is_the_stores_only_after_a_long_wait_for_it(call: Any) -> None:
    """Both were put on the store (a 503, a database incident) with the store healthy: the
    deadline fell in a read just begun, or an earlier cut of the agent's own was taken."""
    with pytest.raises(TimeoutError):
        await DeadlineWatchdog().run(call(), 0.2)


async def turns_its_cut_into(error: BaseException) -> str:
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        raise error from None
    return "slept"


async def swallows_its_cut() -> str:
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        return "partial answer"
    return "slept"


@pytest.mark.parametrize("first", [lambda: turns_its_cut_into(ConnectionError()), swallows_its_cut])
async def test_a_cut_the_call_does_not_pass_on_is_taken_back_all_the_same(first: Any) -> None:
    """The task stayed marked as cancelled: the next timeout in it (the guard's retry) came
    out as a bare CancelledError, past the fallbacks, and ended the chat."""
    watchdog = DeadlineWatchdog()
    with contextlib.suppress(ConnectionError, TimeoutError):
        await watchdog.run(first(), 0.05)
    assert asyncio.current_task().cancelling() == 0
    with pytest.raises(TimeoutError):
        await watchdog.run(sleeps(5), 0.05)


async def test_an_answer_given_after_the_cut_was_caught_is_a_timeout() -> None:
    """An agent that catches its cut and answers after its limit: before, its answer was
    taken as a success, its breaker never told it had run five times over its limit."""
    with pytest.raises(TimeoutError, match="took longer than"):
        await DeadlineWatchdog().run(swallows_its_cut(), 0.05)
    assert asyncio.current_task().cancelling() == 0


async def awaits_a_cancelled_helper() -> str:
    helper = asyncio.ensure_future(asyncio.sleep(5))
    await asyncio.sleep(0)
    helper.cancel()
    return await helper  # its CancelledError, thrown in while the call waits


async def test_an_agents_own_cancelled_error_thrown_in_while_it_waits_is_its_failure() -> None:
    with pytest.raises(RaisedBaseException):
        await DeadlineWatchdog().run(awaits_a_cancelled_helper(), 1.0)
    assert asyncio.current_task().cancelling() == 0


async def keeps_going_when_cut(for_s: float) -> str:
    try:
        await asyncio.sleep(5)
    except BaseException:  # an agent that catches its cut, as the README warns against
        await asyncio.sleep(for_s)
    return "late"


async def test_a_call_that_ignores_its_cut_fails_for_its_own_limit_not_the_callers() -> None:
    """An agent that caught its cut ran on until the router's limit cut it there: the
    router's call failed with TimeoutError (its breaker, an incident isolating the router,
    every chat's generic answer) and the agent's own fallbacks never answered."""
    watchdog = DeadlineWatchdog()

    async def router() -> str:
        try:
            return await watchdog.run(keeps_going_when_cut(5), 0.05)
        except TimeoutError as exc:
            assert "0.05 s" in str(exc)
            return "fallback"

    assert await watchdog.run(router(), 0.2) == "fallback"
    assert asyncio.current_task().cancelling() == 0
    # The router's own limit still holds for its own next call.
    with pytest.raises(TimeoutError):
        await watchdog.run(sleeps(5), 0.05)


async def test_the_limit_taken_back_still_bounds_what_the_call_does_next() -> None:
    """Taken back, the router's limit was gone for good: a fallback that caught its own
    cut too held the chat for as long as it liked."""
    watchdog = DeadlineWatchdog()

    async def router() -> str:
        try:
            return await watchdog.run(keeps_going_when_cut(5), 0.05)
        except TimeoutError:
            pass
        try:
            return await watchdog.run(keeps_going_when_cut(5), 0.05)  # the fallback
        except TimeoutError:
            pass
        await asyncio.sleep(5)  # the router's own work after both: its limit cuts it
        return "late"

    with pytest.raises(TimeoutError):
        await watchdog.run(router(), 0.2)
    assert asyncio.current_task().cancelling() == 0


async def test_a_caught_cut_under_an_outside_cancellation_stays_cancelled() -> None:
    """The task's own cancellation (a client gone, a shutdown) is no limit to take back."""
    watchdog = DeadlineWatchdog()

    async def router() -> str:
        return await watchdog.run(keeps_going_when_cut(5), 0.05)

    async def chat() -> str:
        return await watchdog.run(router(), 0.2)

    task = asyncio.ensure_future(chat())
    await asyncio.sleep(0.1)  # the agent's limit cut it, and it went on
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def catches_two_cuts() -> str:
    for _ in range(2):
        with contextlib.suppress(BaseException):  # its own cut, then the router's
            await asyncio.sleep(5)
    return "late"


async def blocks_then_catches() -> str:
    await asyncio.sleep(0)
    time.sleep(0.1)  # past both limits: one timer run cuts both
    try:
        await asyncio.sleep(5)
    except BaseException:
        return "late"
    return "slept"


@pytest.mark.parametrize(
    "agent,limits", [(catches_two_cuts, (0.05, 0.2)), (blocks_then_catches, (0.05, 0.06))]
)
async def test_a_late_answer_past_the_routers_limit_too_is_the_agents_timeout(
    agent: Any, limits: tuple[float, float]
) -> None:
    """Taken as no answer, a late one must still take back the router's cut it caught: the
    router's call failed for the agent's overrun, its breaker and its fallback blamed."""
    watchdog = DeadlineWatchdog()
    inner, outer = limits

    async def router() -> str:
        try:
            return await watchdog.run(agent(), inner)
        except TimeoutError:
            return "fallback"

    assert await watchdog.run(router(), outer) == "fallback"
    assert asyncio.current_task().cancelling() == 0


async def test_a_cut_the_caller_caught_before_the_call_began_is_not_taken_back() -> None:
    """The router caught its own cut, then asked an agent that answered late: the router's
    overrun was taken back with the agent's, and its call ended as a success."""
    watchdog = DeadlineWatchdog()

    async def router() -> str:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(5)  # cut at 0.05 s, caught
        try:
            return await watchdog.run(swallows_its_cut(), 0.05)
        except TimeoutError:
            return "fallback"

    with pytest.raises(TimeoutError):
        await watchdog.run(router(), 0.05)
    assert asyncio.current_task().cancelling() == 0
