"""The circuit breaker in front of each agent: synchronous, clock-injected state.

Every method runs to completion without awaiting, so on one event loop the state needs no
lock; ``call`` awaits the protected function only between taking and reporting a permit.
Transitions out of OPEN and FORCED_OPEN (with a TTL) and the abandonment of hung half-open
trials happen lazily, on the next ``acquire``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import ParamSpec, TypeVar

from service.resilience.breaker_config import BreakerConfig, BreakerState
from service.resilience.breaker_events import (
    BreakerEvent,
    BreakerEventKind,
    BreakerEvents,
    BreakerListener,
    add_transition_span_event,
    iso_utc,
)
from service.resilience.breaker_operations import OperatorActions
from service.resilience.breaker_permit import (
    CallNotPermitted,
    Forcing,
    Permit,
    ProbeOutcome,
    ResetRefused,
    describe_error,
)

__all__ = [
    "BreakerConfig",
    "BreakerEvent",
    "BreakerEventKind",
    "BreakerState",
    "CallNotPermitted",
    "CircuitBreaker",
    "Forcing",
    "Permit",
    "ProbeOutcome",
    "ResetRefused",
    "add_transition_span_event",
]

P = ParamSpec("P")
T = TypeVar("T")

CLOSED = BreakerState.CLOSED
OPEN = BreakerState.OPEN
HALF_OPEN = BreakerState.HALF_OPEN
FORCED_OPEN = BreakerState.FORCED_OPEN
DISABLED = BreakerState.DISABLED

# Outcomes in the sliding window; EMPTY marks a slot not yet filled.
EMPTY, SUCCEEDED, SLOW, FAILED = 0, 1, 2, 3


class CircuitBreaker(OperatorActions):
    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        span_events: bool = True,
    ) -> None:
        self.name = name
        self.config = config = config or BreakerConfig()
        self._clock = clock
        self._wall_clock = wall_clock
        self._events = BreakerEvents(config.history_size)
        if span_events:
            self._events.subscribe(add_transition_span_event, [BreakerEventKind.STATE_TRANSITION])
        # Copied out of the config: read on every call.
        self._slow_call_duration_s = config.slow_call_duration_s
        self._minimum_calls = config.minimum_calls
        self._window_size = config.sliding_window_size
        self._state = CLOSED
        # Bumped on every transition and reset, so permits taken before it report nothing.
        self._epoch = 0
        # Rejections since the breaker was created, for the snapshot.
        self._rejected_calls = 0
        # When set, a half-open trial call is admitted only while it returns True: a fleet
        # of replicas lets one of them at a time run the trial (see service.fleet).
        self.trial_gate: Callable[[], bool] | None = None
        self._clear_counters()

    def _clear_counters(self) -> None:
        self._window = bytearray(self._window_size)
        self._cursor = 0
        self._buffered = 0
        self._failed = 0
        self._slow = 0
        self._consecutive_failures = 0
        self._trips = 0
        self._open_duration_s = self.config.open_duration_s
        self._opened_at: float | None = None
        self._opened_at_wall: float | None = None
        self._next_attempt_at = 0.0
        self._open_reason = ""
        self._trials: list[Permit] = []
        self._trial_successes = 0
        self._forced: Forcing | None = None
        self._last_failure_at: float | None = None
        self._last_failure_at_wall: float | None = None
        self._last_error: str | None = None

    @property
    def state(self) -> BreakerState:
        return self._state

    # --- calls -----------------------------------------------------------------------------

    def acquire(self) -> Permit:
        """A permit for one call, or ``CallNotPermitted`` when the breaker rejects it."""
        if self._state is CLOSED:
            return Permit(self, self._epoch)
        return self._acquire_when_not_closed()

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn`` under a permit and record its outcome and duration."""
        permit = self.acquire()
        started = self._clock()
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            permit.record_failure(exc, self._clock() - started)
            raise
        except BaseException:
            # Cancellation says nothing about the dependency's health.
            permit.release()
            raise
        permit.record_success(self._clock() - started)
        return result

    def _acquire_when_not_closed(self) -> Permit:
        state = self._state
        if state is DISABLED:
            return Permit(self, self._epoch)
        now = self._clock()
        if state is OPEN and now >= self._next_attempt_at:
            self._transition(HALF_OPEN, "open duration elapsed; admitting trial calls")
        elif state is FORCED_OPEN and self._forced is not None:
            expires_at = self._forced.expires_at
            if expires_at is not None and now >= expires_at:
                self._transition(HALF_OPEN, "forced open expired; admitting trial calls")
        if self._state is HALF_OPEN:
            trials = self._trials
            # Trials are in acquire order, so the oldest is the first to hang past the wait.
            if trials and now - trials[0]._started_at >= self.config.half_open_max_wait_s:
                self._abandon(trials[0], now)
            elif len(trials) < self.config.half_open_max_calls and (
                self.trial_gate is None or self.trial_gate()
            ):
                permit = Permit(self, self._epoch, now)
                trials.append(permit)
                return permit
        raise self._rejection(now)

    def _rejection(self, now: float) -> CallNotPermitted:
        self._rejected_calls += 1
        state, name = self._state, self.name
        retry_after: float | None
        if state is OPEN:
            retry_after = max(0.0, self._next_attempt_at - now)
            why = (
                f"breaker '{name}' is open ({self._open_reason}); "
                f"the next trial call is admitted in {retry_after:.1f} s"
            )
        elif state is FORCED_OPEN and self._forced is not None:
            forcing = self._forced
            expires_at = forcing.expires_at
            retry_after = None if expires_at is None else max(0.0, expires_at - now)
            until = "it is released" if retry_after is None else f"{retry_after:.1f} s from now"
            why = (
                f"breaker '{name}' is forced open by {forcing.source} ({forcing.reason}) "
                f"until {until}"
            )
        elif not self._trials:
            # Only when a trial gate held the call back.
            retry_after = None
            why = (
                f"breaker '{name}' is half-open and its trial call runs on another replica; "
                "it closes here once that call succeeds"
            )
        else:
            wait = self.config.half_open_max_wait_s
            retry_after = max(0.0, self._trials[0]._started_at + wait - now)
            why = (
                f"breaker '{name}' is half-open and its {len(self._trials)} trial call(s) "
                f"are in flight; retry in {retry_after:.1f} s"
            )
        if self._events.wanted(BreakerEventKind.CALL_NOT_PERMITTED):
            self._publish(BreakerEventKind.CALL_NOT_PERMITTED, state, state, why)
        return CallNotPermitted(name, state, retry_after, why)

    # --- outcomes (reported by permits) ----------------------------------------------------

    def _on_success(self, permit: Permit, duration_s: float) -> bool:
        """True when this success opened the breaker."""
        if permit._epoch != self._epoch:
            return False
        if self._state is CLOSED:
            self._consecutive_failures = 0
            slow = duration_s >= self._slow_call_duration_s
            self._push(SLOW if slow else SUCCEEDED)
            # A success lowers the failure rate, so the rates need judging only when the
            # call was slow or the window just reached minimum_calls.
            if slow or self._buffered == self._minimum_calls:
                self._trip_if_rates_reached()
                return self._state is OPEN
        elif self._state is HALF_OPEN:
            self._trials.remove(permit)
            if duration_s >= self._slow_call_duration_s:
                self._trip(
                    f"the trial call was slow ({duration_s:.1f} s, slow from "
                    f"{self._slow_call_duration_s:g} s)"
                )
                return True
            self._trial_successes += 1
            if self._trial_successes >= self.config.half_open_success_threshold:
                self._close(f"{self._trial_successes} trial call(s) succeeded")
        return False

    def _on_failure(self, permit: Permit, exc: BaseException, duration_s: float) -> None:
        if not self.config.counts(exc):
            self._on_release(permit)
            return
        if permit._epoch != self._epoch or self._state not in (CLOSED, HALF_OPEN):
            return
        error = describe_error(exc)
        self._consecutive_failures += 1
        self._last_failure_at = self._clock()
        self._last_failure_at_wall = self._wall_clock()
        self._last_error = error
        if self._events.wanted(BreakerEventKind.ERROR_RECORDED):
            self._publish(BreakerEventKind.ERROR_RECORDED, self._state, self._state, error)
        if self._state is HALF_OPEN:
            self._trials.remove(permit)
            self._trip(f"the trial call failed ({error})")
            return
        self._push(FAILED)
        threshold = self.config.failure_threshold
        if self._consecutive_failures >= threshold:
            self._trip(f"{self._consecutive_failures} consecutive failures, last: {error}")
        else:
            self._trip_if_rates_reached()

    def _on_release(self, permit: Permit) -> None:
        if permit._epoch == self._epoch and self._state is HALF_OPEN:
            self._trials.remove(permit)

    def _abandon(self, trial: Permit, now: float) -> None:
        trial._pending = False
        self._trials.remove(trial)
        waited = now - trial._started_at
        self._consecutive_failures += 1
        self._last_failure_at = now
        self._last_failure_at_wall = self._wall_clock()
        self._last_error = f"TrialAbandoned: no outcome after {waited:.1f} s"
        self._trip(f"the trial call was abandoned after {waited:.1f} s without an outcome")

    def _push(self, outcome: int) -> None:
        window, cursor = self._window, self._cursor
        evicted = window[cursor]
        if evicted == EMPTY:
            self._buffered += 1
        elif evicted == FAILED:
            self._failed -= 1
        elif evicted == SLOW:
            self._slow -= 1
        window[cursor] = outcome
        if outcome == FAILED:
            self._failed += 1
        elif outcome == SLOW:
            self._slow += 1
        cursor += 1
        self._cursor = 0 if cursor == self._window_size else cursor

    def _trip_if_rates_reached(self) -> None:
        buffered = self._buffered
        if buffered < self._minimum_calls:
            return
        config = self.config
        if self._failed / buffered >= config.failure_rate_threshold:
            self._trip(
                f"failure rate {self._failed / buffered:.0%} over the last {buffered} calls "
                f"reached the {config.failure_rate_threshold:.0%} threshold"
            )
        elif self._slow / buffered >= config.slow_call_rate_threshold:
            self._trip(
                f"slow-call rate {self._slow / buffered:.0%} over the last {buffered} calls "
                f"reached the {config.slow_call_rate_threshold:.0%} threshold"
            )

    # --- transitions -----------------------------------------------------------------------

    def _trip(self, reason: str) -> None:
        config = self.config
        self._trips += 1
        if self._trips > 1:
            self._open_duration_s = min(
                config.max_open_duration_s, self._open_duration_s * config.open_backoff_multiplier
            )
        now = self._clock()
        self._opened_at, self._opened_at_wall = now, self._wall_clock()
        self._next_attempt_at = now + self._open_duration_s
        self._open_reason = reason
        self._transition(OPEN, reason)

    def _close(self, reason: str, source: str | None = None) -> None:
        self._clear_counters()
        self._transition(CLOSED, reason, source)

    def _transition(self, to_state: BreakerState, reason: str, source: str | None = None) -> None:
        from_state = self._state
        self._state = to_state
        self._epoch += 1
        self._trials = []
        self._trial_successes = 0
        if to_state is not FORCED_OPEN:
            self._forced = None
        if to_state in (CLOSED, DISABLED):
            self._opened_at = self._opened_at_wall = None
        self._publish(BreakerEventKind.STATE_TRANSITION, from_state, to_state, reason, source)

    def _publish(
        self,
        kind: BreakerEventKind,
        from_state: BreakerState,
        to_state: BreakerState,
        reason: str,
        source: str | None = None,
    ) -> None:
        event = BreakerEvent(
            kind, self.name, from_state, to_state, self._wall_clock(), reason, source
        )
        self._events.publish(event)

    # --- inspection ------------------------------------------------------------------------

    def subscribe(
        self, listener: BreakerListener, kinds: Iterable[BreakerEventKind] | None = None
    ) -> Callable[[], None]:
        """Deliver this breaker's events (all kinds, or only ``kinds``); returns unsubscribe."""
        return self._events.subscribe(listener, kinds)

    def history(self) -> list[BreakerEvent]:
        """Transitions and operator actions, oldest first, at most ``history_size``."""
        return self._events.history()

    @property
    def forcing(self) -> Forcing | None:
        """Who holds the breaker forced open, why and until when; None when not forced."""
        return self._forced if self._state is FORCED_OPEN else None

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    def snapshot(self) -> dict[str, object]:
        state, buffered = self._state, self._buffered
        judged = buffered >= self._minimum_calls
        next_attempt_at: float | None = None
        if state is OPEN and self._opened_at_wall is not None:
            next_attempt_at = self._opened_at_wall + self._open_duration_s
        forced = None
        if self._forced is not None:
            forcing = self._forced
            forced = {
                "reason": forcing.reason,
                "source": forcing.source,
                "expiresAt": iso_utc(forcing.expires_at_wall),
            }
            next_attempt_at = forcing.expires_at_wall
        return {
            "name": self.name,
            "state": state.value,
            "failureCount": self._consecutive_failures,
            "failureRate": round(self._failed / buffered, 4) if judged else None,
            "slowCallRate": round(self._slow / buffered, 4) if judged else None,
            "bufferedCalls": buffered,
            "lastFailureAt": iso_utc(self._last_failure_at_wall),
            "lastError": self._last_error,
            "openedAt": iso_utc(self._opened_at_wall),
            "nextAttemptAt": iso_utc(next_attempt_at),
            "openDurationS": self._open_duration_s,
            "forced": forced,
            "halfOpenInFlight": len(self._trials),
            "rejectedCalls": self._rejected_calls,
        }

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value})"
