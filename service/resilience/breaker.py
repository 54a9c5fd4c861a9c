"""The circuit breaker in front of each agent: synchronous, clock-injected state.

Every method runs to completion without awaiting, so on one event loop the state needs no
lock; ``call`` awaits the protected function only between taking and reporting a permit.
Transitions out of OPEN and FORCED_OPEN (with a TTL) and the abandonment of hung half-open
trials happen lazily, on the next ``acquire``, or on ``advance`` (a report, so that it never
shows a forcing that ran out while no call came). The breaker is composed of its failure window
(``breaker_window``), its open period and forcing (``breaker_open``) and its events
(``breaker_events``); it holds the state machine and the operator's actions.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import ParamSpec, TypeVar

from service.resilience.breaker_config import BreakerConfig, BreakerState, TrialGate
from service.resilience.breaker_events import (
    BreakerEvent,
    BreakerEventKind,
    BreakerEvents,
    BreakerListener,
    add_transition_span_event,
    iso_utc,
)
from service.resilience.breaker_open import Forcing, OpenPeriod, trial_rejection
from service.resilience.breaker_permit import (
    CallNotPermitted,
    Permit,
    ProbeOutcome,
    ResetRefused,
    TrialPermit,
    describe_error,
)
from service.resilience.breaker_window import FAILED, SLOW, SUCCEEDED, FailureWindow

P = ParamSpec("P")
T = TypeVar("T")

CLOSED = BreakerState.CLOSED
OPEN = BreakerState.OPEN
HALF_OPEN = BreakerState.HALF_OPEN
FORCED_OPEN = BreakerState.FORCED_OPEN
DISABLED = BreakerState.DISABLED


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
        self._state = CLOSED
        # Bumped on every transition and reset, so permits taken before it report nothing.
        self._epoch = 0
        # Rejections since the breaker was created, for the snapshot.
        self._rejected_calls = 0
        # When set, a half-open trial call is admitted only while it returns True: a fleet
        # of replicas lets one of them at a time run the trial (see service.fleet).
        self.trial_gate: TrialGate | None = None
        self._window = FailureWindow(config)
        self._open = OpenPeriod(config)
        self._forced: Forcing | None = None
        self._trials: list[TrialPermit] = []
        self._trial_successes = 0

    @property
    def state(self) -> BreakerState:
        return self._state

    # --- calls -----------------------------------------------------------------------------

    def acquire(self) -> Permit:
        """A permit for one call, or ``CallNotPermitted`` when the breaker rejects it."""
        if self._state is CLOSED:
            # Built inline rather than through Permit.of: on CPython 3.11 a class with a
            # Python __init__ costs about twice as much to make as one without, and this is
            # every call's path.
            permit = Permit()
            permit._breaker, permit._epoch = self, self._epoch
            return permit
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
            return Permit.of(self, self._epoch)
        now = self._clock()
        self._advance(state, now)
        if self._state is HALF_OPEN:
            trials = self._trials
            # Trials are in acquire order, so the oldest is the first to hang past the wait.
            if trials and now - trials[0]._started_at >= self.config.half_open_max_wait_s:
                self._abandon(trials[0], now)
            elif len(trials) < self.config.half_open_max_calls and (
                self.trial_gate is None or self.trial_gate()
            ):
                permit = TrialPermit(self, self._epoch, now)
                trials.append(permit)
                return permit
        raise self._rejection(now)

    def _rejection(self, now: float) -> CallNotPermitted:
        self._rejected_calls += 1
        state, name = self._state, self.name
        retry_after: float | None
        if state is OPEN:
            retry_after, why = self._open.rejection(name, now)
        elif state is FORCED_OPEN and self._forced is not None:
            retry_after, why = self._forced.rejection(name, now)
        else:
            started = self._trials[0]._started_at if self._trials else None
            retry_after, why = trial_rejection(
                name, len(self._trials), started, self.config.half_open_max_wait_s, now
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
            slow = duration_s >= self._slow_call_duration_s
            trip = self._window.record(SLOW if slow else SUCCEEDED)
            if trip is None:
                return False
            self._trip(trip)
            return True
        if self._state is HALF_OPEN:
            self._trials.remove(permit)  # type: ignore[arg-type]
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
        state = self._state
        if permit._epoch != self._epoch or state not in (CLOSED, HALF_OPEN):
            return
        error = describe_error(exc)
        self._window.note_failure(error, self._clock(), self._wall_clock())
        if self._events.wanted(BreakerEventKind.ERROR_RECORDED):
            self._publish(BreakerEventKind.ERROR_RECORDED, state, state, error)
        if state is HALF_OPEN:
            self._trials.remove(permit)
            self._trip(f"the trial call failed ({error})")
        elif (trip := self._window.record(FAILED)) is not None:
            self._trip(trip)

    def _on_release(self, permit: Permit) -> None:
        if permit._epoch == self._epoch and self._state is HALF_OPEN:
            self._trials.remove(permit)

    def _abandon(self, trial: TrialPermit, now: float) -> None:
        trial._breaker = None
        self._trials.remove(trial)
        waited = now - trial._started_at
        error = f"TrialAbandoned: no outcome after {waited:.1f} s"
        self._window.note_failure(error, now, self._wall_clock())
        self._trip(f"the trial call was abandoned after {waited:.1f} s without an outcome")

    # --- what operators and alerts do ------------------------------------------------------

    def reset(
        self, force: bool = False, probe: ProbeOutcome | None = None, *, source: str | None = None
    ) -> str:
        """Close the breaker and clear its counters and backoff. Without ``force``, only when
        its cause is gone: a health ``probe`` run just now decides; without one, an open
        breaker's failure within the open duration says the cause may still be there.
        ``ResetRefused`` says why and what to do instead."""
        state, name, window = self._state, self.name, self._window
        if not force:
            last = window.last_failure_at
            refused = ResetRefused.unless_cause_gone(
                name,
                state.value,
                probe,
                None if last is None else self._clock() - last,
                window.last_error,
                self._open.duration_s,
            )
            if refused is not None:
                raise refused
        reason = "reset with force" if force else "reset"
        if state is CLOSED:
            self._clear_counters()
            self._epoch += 1
            self._publish(BreakerEventKind.RESET, CLOSED, CLOSED, reason, source)
        else:
            self._close(reason, source)
        return f"breaker '{name}' was {state.words} and is now closed with cleared counters"

    def close(self, reason: str, *, source: str | None = None) -> None:
        """Close the breaker for ``reason``, not a reset: another replica's trial passed."""
        self._close(reason, source)

    def force_open(
        self,
        reason: str,
        source: str,
        ttl_s: float | None = None,
        *,
        until: float | None = None,
        incident: str | None = None,
        carried: bool = False,
        since: float | None = None,
    ) -> str:
        """Hold the breaker open until released, reset, or ``ttl_s`` seconds have passed
        (or the wall-clock time ``until``); then it moves to HALF_OPEN, never straight to
        CLOSED. ``incident``: the incident the agent is isolated for. ``carried``: a forcing
        put back after a restart (opened at wall-clock ``since``) or from another replica."""
        now, wall = self._clock(), self._wall_clock()
        held = self.forcing  # renewed: still the isolation that began when it was forced
        since = held.since if held else since if carried else None
        forcing = Forcing.until(reason, source, ttl_s, until, now, wall, incident, since)
        self._forced = forcing
        if held is not None:
            self._publish(BreakerEventKind.FORCE_RENEWED, FORCED_OPEN, FORCED_OPEN, reason, source)
            return forcing.said(self.name, now, renewed=True)
        self._open.opened_at_wall = forcing.since
        self._transition(FORCED_OPEN, reason, source, carried)
        return forcing.said(self.name, now)

    def release(self, *, source: str | None = None) -> str:
        """Lift a forced open: the breaker goes HALF_OPEN and trial calls decide the rest."""
        if self._state is not FORCED_OPEN:
            return (
                f"breaker '{self.name}' is {self._state.words}, not forced open; nothing to release"
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
            return f"breaker '{self.name}' is {self._state.words}, not disabled; nothing to enable"
        self._close("enabled", source)
        return f"breaker '{self.name}' is enabled and closed"

    # --- transitions -----------------------------------------------------------------------

    def _trip(self, reason: str) -> None:
        self._open.trip(self._clock(), self._wall_clock(), reason)
        self._transition(OPEN, reason)

    def _clear_counters(self) -> None:
        self._window.clear()
        self._open.clear()
        self._forced = None
        self._trials = []
        self._trial_successes = 0

    def _close(self, reason: str, source: str | None = None) -> None:
        self._clear_counters()
        self._transition(CLOSED, reason, source)

    def _transition(
        self, to_state: BreakerState, reason: str, source: str | None = None, carried: bool = False
    ) -> None:
        from_state = self._state
        self._state = to_state
        self._epoch += 1
        self._trials = []
        self._trial_successes = 0
        if to_state is not FORCED_OPEN:
            self._forced = None
        if to_state in (CLOSED, DISABLED):
            self._open.opened_at_wall = None
        self._publish(
            BreakerEventKind.STATE_TRANSITION, from_state, to_state, reason, source, carried
        )

    def _publish(
        self,
        kind: BreakerEventKind,
        from_state: BreakerState,
        to_state: BreakerState,
        reason: str,
        source: str | None = None,
        carried: bool = False,
    ) -> None:
        at = self._forced.since if carried and self._forced else self._wall_clock()
        event = BreakerEvent(kind, self.name, from_state, to_state, at, reason, source, carried)
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

    def admits_calls_now(self) -> bool:
        """Whether ``acquire`` would give a permit now, asked without taking one (and without
        the half-open trial gate, which a fleet answers by taking a lease)."""
        state, now = self._state, self._clock()
        if state is CLOSED or state is DISABLED:
            return True
        if state is OPEN:
            return now >= self._open.next_attempt_at
        if state is FORCED_OPEN:
            return self._forced is not None and self._forced.remaining(now) == 0.0
        return len(self._trials) < self.config.half_open_max_calls

    @property
    def forcing(self) -> Forcing | None:
        """Who holds the breaker forced open, why and until when; None when not forced."""
        return self._forced if self._state is FORCED_OPEN else None

    def advance(self) -> BreakerState:
        """The state after what time alone decides: an open period or a forcing ran out."""
        self._advance(self._state, self._clock())
        return self._state

    def _advance(self, state: BreakerState, now: float) -> None:
        if state is OPEN and now >= self._open.next_attempt_at:
            self._transition(HALF_OPEN, "open duration elapsed; admitting trial calls")
        elif state is FORCED_OPEN and self._forced and self._forced.remaining(now) == 0.0:
            self._transition(HALF_OPEN, "forced open expired; admitting trial calls")

    def snapshot(self) -> dict[str, object]:
        self.advance()
        window, forcing = self._window, self._forced
        failure_rate, slow_call_rate = window.rates()
        next_attempt_at = self._open.next_attempt_wall() if self._state is OPEN else None
        if forcing is not None:
            next_attempt_at = forcing.expires_at_wall
        return {
            "name": self.name,
            "state": self._state.value,
            "failureCount": window.consecutive_failures,
            "failureRate": failure_rate,
            "slowCallRate": slow_call_rate,
            "bufferedCalls": window.buffered,
            "lastFailureAt": iso_utc(window.last_failure_at_wall),
            "lastError": window.last_error,
            "openedAt": iso_utc(self._open.opened_at_wall),
            "nextAttemptAt": iso_utc(next_attempt_at),
            "openDurationS": self._open.duration_s,
            "forced": None if forcing is None else forcing.to_dict(),
            "halfOpenInFlight": len(self._trials),
            "rejectedCalls": self._rejected_calls,
        }

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value})"
