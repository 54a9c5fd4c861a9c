"""The breaker under concurrent asyncio callers: half-open admission, hung and cancelled
trials, and outcomes of awaited functions."""

from __future__ import annotations

import asyncio

import pytest

from service.errors import DependencyError, UserInputError
from service.resilience.breaker import (
    BreakerConfig,
    BreakerState,
    CallNotPermitted,
    CircuitBreaker,
)
from tests.service.test_breaker import ManualClock


async def let_tasks_run() -> None:
    """Give every ready task a few turns of the loop; no time passes."""
    for _ in range(5):
        await asyncio.sleep(0)


async def trial_waiting_on(
    breaker: CircuitBreaker, outcome: asyncio.Future[str]
) -> asyncio.Task[str]:
    """A trial call, admitted, that returns once ``outcome`` is set."""

    async def waits() -> str:
        return await outcome

    trial = asyncio.create_task(breaker.call(waits))
    await let_tasks_run()
    return trial


def half_open_breaker(clock: ManualClock, **config: object) -> CircuitBreaker:
    breaker = CircuitBreaker(
        "budget",
        BreakerConfig(failure_threshold=1, open_duration_s=30.0, **config),
        clock=clock,
        span_events=False,
    )
    breaker.acquire().record_failure(DependencyError("database down"))
    clock.advance(30.0)
    return breaker


@pytest.mark.parametrize("trials", [1, 3])
async def test_half_open_admits_exactly_k_trials_and_rejects_the_rest_at_once(
    trials: int,
) -> None:
    clock = ManualClock()
    breaker = half_open_breaker(clock, half_open_max_calls=trials)
    gate = asyncio.Event()
    running = 0

    async def trial_call() -> str:
        nonlocal running
        running += 1
        await gate.wait()
        return "recovered"

    tasks = [asyncio.create_task(breaker.call(trial_call)) for _ in range(50)]
    await let_tasks_run()

    # Everyone but the trials is already finished, while the trials still wait at the gate.
    finished = [task for task in tasks if task.done()]
    assert running == trials
    assert len(finished) == 50 - trials
    for task in finished:
        rejected = task.exception()
        assert isinstance(rejected, CallNotPermitted)
        assert rejected.state is BreakerState.HALF_OPEN
    snapshot = breaker.snapshot()
    assert snapshot["halfOpenInFlight"] == trials
    assert snapshot["rejectedCalls"] == 50 - trials

    gate.set()
    results = await asyncio.gather(*(task for task in tasks if task not in finished))
    assert results == ["recovered"] * trials
    assert breaker.state is BreakerState.CLOSED


async def test_a_hung_trial_is_abandoned_after_the_max_wait_and_counts_as_failure() -> None:
    clock = ManualClock()
    breaker = half_open_breaker(clock, half_open_max_wait_s=10.0)
    hung = await trial_waiting_on(breaker, asyncio.get_running_loop().create_future())
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.snapshot()["halfOpenInFlight"] == 1

    clock.advance(9.9)
    with pytest.raises(CallNotPermitted) as rejected:
        breaker.acquire()
    assert rejected.value.retry_after_s == pytest.approx(0.1)

    clock.advance(0.1)
    with pytest.raises(CallNotPermitted) as rejected:
        breaker.acquire()
    # The abandoned trial counted as a failure, so the breaker reopened with a longer wait.
    assert rejected.value.state is BreakerState.OPEN
    assert rejected.value.retry_after_s == pytest.approx(60.0)
    snapshot = breaker.snapshot()
    assert snapshot["failureCount"] == 2
    assert snapshot["halfOpenInFlight"] == 0
    assert str(snapshot["lastError"]).startswith("TrialAbandoned: no outcome after 10.0 s")
    assert "abandoned after 10.0 s" in breaker.history()[-1].reason

    clock.advance(60.0)
    new_trial = breaker.acquire()
    assert breaker.state is BreakerState.HALF_OPEN
    new_trial.record_success(0.2)
    assert breaker.state is BreakerState.CLOSED

    hung.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hung
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["failureCount"] == 0


async def test_a_trial_reporting_after_it_was_abandoned_changes_nothing() -> None:
    clock = ManualClock()
    breaker = half_open_breaker(clock, half_open_max_wait_s=10.0)
    late: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    trial = await trial_waiting_on(breaker, late)
    clock.advance(10.0)
    with pytest.raises(CallNotPermitted):
        breaker.acquire()
    late.set_result("finally")
    assert await trial == "finally"
    assert breaker.state is BreakerState.OPEN


async def test_a_cancelled_trial_frees_its_slot_without_counting() -> None:
    clock = ManualClock()
    breaker = half_open_breaker(clock)
    trial = asyncio.create_task(breaker.call(asyncio.sleep, 3600))
    await let_tasks_run()
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.snapshot()["failureCount"] == 1
    assert await breaker.call(asyncio.sleep, 0, "ok") == "ok"
    assert breaker.state is BreakerState.CLOSED


async def test_call_counts_errors_raised_by_async_functions() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(
        "budget",
        BreakerConfig(failure_threshold=3, ignore_exceptions=(UserInputError,)),
        clock=clock,
        span_events=False,
    )
    invoked = 0

    async def depends_on_a_broken_database(amount: int, *, currency: str) -> str:
        nonlocal invoked
        invoked += 1
        await asyncio.sleep(0)
        if amount < 0:
            raise UserInputError("amount must be positive")
        raise DependencyError(f"database down while saving {amount} {currency}")

    with pytest.raises(UserInputError):
        await breaker.call(depends_on_a_broken_database, -1, currency="EUR")
    assert breaker.snapshot()["failureCount"] == 0
    for _ in range(3):
        with pytest.raises(DependencyError):
            await breaker.call(depends_on_a_broken_database, 5, currency="EUR")
    assert breaker.state is BreakerState.OPEN
    assert breaker.snapshot()["lastError"] == "DependencyError: database down while saving 5 EUR"

    with pytest.raises(CallNotPermitted):
        await breaker.call(depends_on_a_broken_database, 5, currency="EUR")
    assert invoked == 4


async def test_call_measures_duration_with_the_injected_clock() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(
        "budget",
        BreakerConfig(sliding_window_size=2, minimum_calls=2, slow_call_duration_s=5.0),
        clock=clock,
        span_events=False,
    )

    async def takes(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(0)

    await breaker.call(takes, 4.9)
    await breaker.call(takes, 5.0)
    assert breaker.snapshot()["slowCallRate"] == 0.5
    await breaker.call(takes, 7.0)
    assert breaker.state is BreakerState.OPEN
