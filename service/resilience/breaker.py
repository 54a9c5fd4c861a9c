"""The circuit breaker in front of each agent: synchronous, clock-injected state.

Every method runs to completion without awaiting, so on one event loop the state needs no
lock; ``call`` awaits the protected function only between taking and reporting a permit.
Transitions out of OPEN and FORCED_OPEN (with a TTL) and the abandonment of hung half-open
trials happen lazily, on the next ``acquire``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from service.errors import ErsError
from service.resilience.breaker_config import BreakerConfig, BreakerState
from service.resilience.breaker_events import (
    BreakerEvent,
    BreakerEventKind,
    BreakerEvents,
    BreakerListener,
    add_transition_span_event,
    iso_utc,
)

__all__ = [
    "BreakerConfig",
    "BreakerEvent",
    "BreakerEventKind",
    "BreakerState",
    "CallNotPermitted",
    "CircuitBreaker",
    "Permit",
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
LAST_ERROR_MAX_CHARS = 300


class CallNotPermitted(ErsError):
    """The breaker rejected the call; ``retry_after_s`` is None when no one can tell."""

    def __init__(self, breaker: str, state: BreakerState, retry_after_s: float | None, why: str):
        super().__init__(why)
        self.breaker = breaker
        self.state = state
        self.retry_after_s = retry_after_s


class ResetRefused(ErsError):
    """A reset was refused because the breaker's cause still fails."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def describe_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if len(text) > LAST_ERROR_MAX_CHARS:
        text = text[: LAST_ERROR_MAX_CHARS - 1] + "…"
    return text


@dataclass(frozen=True, slots=True)
class Forcing:
    """Who holds a breaker forced open, why, and until when (monotonic and wall time)."""

    reason: str
    source: str
    expires_at: float | None
    expires_at_wall: float | None


class Permit:
    """The right to make one call; reports its outcome once, later reports are no-ops."""

    __slots__ = ("_breaker", "_epoch", "_started_at", "_pending")

    def __init__(self, breaker: CircuitBreaker, epoch: int, started_at: float = 0.0) -> None:
        self._breaker = breaker
        self._epoch = epoch
        self._started_at = started_at
        self._pending = True

    def record_success(self, duration_s: float = 0.0) -> None:
        if self._pending:
            self._pending = False
            self._breaker._on_success(self, duration_s)

    def record_failure(self, exc: BaseException, duration_s: float = 0.0) -> None:
        """Count ``exc`` against the breaker, or treat the call as ignored if its class
        does not count. A failure counts the same however long it took: ``duration_s``
        only keeps the signature symmetric with ``record_success``."""
        if self._pending:
            self._pending = False
            self._breaker._on_failure(self, exc, duration_s)

    def release(self) -> None:
        """The call was abandoned without an outcome: free the permit, count nothing."""
        if self._pending:
            self._pending = False
            self._breaker._on_release(self)


class CircuitBreaker:
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
            elif len(trials) < self.config.half_open_max_calls:
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

    def _on_success(self, permit: Permit, duration_s: float) -> None:
        if permit._epoch != self._epoch:
            return
        if self._state is CLOSED:
            self._consecutive_failures = 0
            slow = duration_s >= self._slow_call_duration_s
            self._push(SLOW if slow else SUCCEEDED)
            # A success lowers the failure rate, so the rates need judging only when the
            # call was slow or the window just reached minimum_calls.
            if slow or self._buffered == self._minimum_calls:
                self._trip_if_rates_reached()
        elif self._state is HALF_OPEN:
            self._trials.remove(permit)
            if duration_s >= self._slow_call_duration_s:
                self._trip(
                    f"the trial call was slow ({duration_s:.1f} s, slow from "
                    f"{self._slow_call_duration_s:g} s)"
                )
                return
            self._trial_successes += 1
            if self._trial_successes >= self.config.half_open_success_threshold:
                self._close(f"{self._trial_successes} trial call(s) succeeded")

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

    # --- operator actions ------------------------------------------------------------------

    def reset(
        self, force: bool = False, probe_error: str | None = None, *, source: str | None = None
    ) -> str:
        """Close the breaker and clear its counters and backoff.

        Without ``force``, an open or forced-open breaker whose cause still fails is not
        reset: ``ResetRefused`` says why and what to do instead.
        """
        state, name = self._state, self.name
        if not force and state in (OPEN, FORCED_OPEN):
            words = "open" if state is OPEN else "forced open"
            next_step = (
                "wait for the half-open trial" if state is OPEN else "release it for a trial"
            )
            if probe_error is not None:
                raise ResetRefused(
                    f"breaker '{name}' is {words} and its health probe still fails "
                    f"({probe_error}); fix the cause or reset with force"
                )
            if self._last_failure_at is not None:
                age = self._clock() - self._last_failure_at
                if age < self._open_duration_s:
                    raise ResetRefused(
                        f"breaker '{name}' is {words} and its last failure was {age:.1f} s ago "
                        f"({self._last_error}); {next_step} or reset with force"
                    )
        reason = "reset with force" if force else "reset"
        if state is CLOSED:
            self._clear_counters()
            self._epoch += 1
            self._publish(BreakerEventKind.RESET, CLOSED, CLOSED, reason, source)
        else:
            self._close(reason, source)
        return f"breaker '{name}' was {state.value} and is now closed with cleared counters"

    def force_open(self, reason: str, source: str, ttl_s: float | None = None) -> str:
        """Hold the breaker open until released, reset, or ``ttl_s`` seconds have passed
        (then it moves to HALF_OPEN, never straight to CLOSED)."""
        if not reason or not source:
            raise ValueError(
                "force_open needs a reason and a source, so the history says who held the "
                "breaker open and why"
            )
        if ttl_s is not None and not ttl_s > 0:
            raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")
        now, wall = self._clock(), self._wall_clock()
        if ttl_s is None:
            self._forced = Forcing(reason, source, None, None)
        else:
            self._forced = Forcing(reason, source, now + ttl_s, wall + ttl_s)
        until = "until released" if ttl_s is None else f"for {ttl_s:g} s"
        if self._state is FORCED_OPEN:
            self._publish(BreakerEventKind.FORCE_RENEWED, FORCED_OPEN, FORCED_OPEN, reason, source)
            return f"breaker '{self.name}' stays forced open by {source} {until}: {reason}"
        self._opened_at, self._opened_at_wall = now, wall
        self._transition(FORCED_OPEN, reason, source)
        return f"breaker '{self.name}' is forced open by {source} {until}: {reason}"

    def release(self, *, source: str | None = None) -> str:
        """Lift a forced open: the breaker goes HALF_OPEN and trial calls decide the rest."""
        if self._state is not FORCED_OPEN:
            return (
                f"breaker '{self.name}' is {self._state.value}, not forced open; nothing to release"
            )
        self._transition(HALF_OPEN, "forced open released; admitting trial calls", source)
        return f"breaker '{self.name}' was released and is half-open"

    def disable(self, *, source: str | None = None) -> str:
        """Let every call through and record nothing, until ``enable``."""
        if self._state is DISABLED:
            return f"breaker '{self.name}' is already disabled"
        self._transition(DISABLED, "disabled", source)
        return f"breaker '{self.name}' is disabled: every call is let through"

    def enable(self, *, source: str | None = None) -> str:
        if self._state is not DISABLED:
            return f"breaker '{self.name}' is {self._state.value}, not disabled; nothing to enable"
        self._close("enabled", source)
        return f"breaker '{self.name}' is enabled and closed"

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
