"""What operators and alerts do to a breaker: reset, force open, release, disable, enable.

A part of CircuitBreaker kept in its own module; it works on the breaker's own state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.resilience.breaker_config import BreakerState
from service.resilience.breaker_events import BreakerEventKind
from service.resilience.breaker_permit import Forcing, ProbeOutcome, ResetRefused

if TYPE_CHECKING:
    from service.resilience.breaker import CircuitBreaker

CLOSED = BreakerState.CLOSED
OPEN = BreakerState.OPEN
HALF_OPEN = BreakerState.HALF_OPEN
FORCED_OPEN = BreakerState.FORCED_OPEN
DISABLED = BreakerState.DISABLED


class OperatorActions:
    def reset(
        self: CircuitBreaker,
        force: bool = False,
        probe: ProbeOutcome | None = None,
        *,
        source: str | None = None,
    ) -> str:
        """Close the breaker and clear its counters and backoff.

        Without ``force``, an open or forced-open breaker is reset only when its cause is
        gone: a health ``probe`` run just now decides; without one, a failure within the
        open duration says the cause may still be there. ``ResetRefused`` says why and what
        to do instead.
        """
        state, name = self._state, self.name
        if not force and state in (OPEN, FORCED_OPEN):
            words = "open" if state is OPEN else "forced open"
            next_step = (
                "wait for the half-open trial" if state is OPEN else "release it for a trial"
            )
            if probe is not None and probe.error is not None:
                raise ResetRefused(
                    f"breaker '{name}' is {words} and its health probe still fails "
                    f"({probe.error}); fix the cause or reset with force"
                )
            if probe is None and self._last_failure_at is not None:
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

    def force_open(
        self: CircuitBreaker,
        reason: str,
        source: str,
        ttl_s: float | None = None,
        *,
        until: float | None = None,
    ) -> str:
        """Hold the breaker open until released, reset, or ``ttl_s`` seconds have passed
        (or the wall-clock time ``until``, for a forced open carried over from before a
        restart); then it moves to HALF_OPEN, never straight to CLOSED."""
        if not reason or not source:
            raise ValueError(
                "force_open needs a reason and a source, so the history says who held the "
                "breaker open and why"
            )
        now, wall = self._clock(), self._wall_clock()
        if until is not None:
            if ttl_s is not None:
                raise ValueError("give force_open either ttl_s or until, not both")
            ttl_s = until - wall
        if ttl_s is not None and not ttl_s > 0:
            raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")
        if ttl_s is None:
            self._forced = Forcing(reason, source, None, None)
        else:
            expires_wall = wall + ttl_s if until is None else until
            self._forced = Forcing(reason, source, now + ttl_s, expires_wall)
        span = "until released" if ttl_s is None else f"for {ttl_s:g} s"
        if self._state is FORCED_OPEN:
            self._publish(BreakerEventKind.FORCE_RENEWED, FORCED_OPEN, FORCED_OPEN, reason, source)
            return f"breaker '{self.name}' stays forced open by {source} {span}: {reason}"
        self._opened_at, self._opened_at_wall = now, wall
        self._transition(FORCED_OPEN, reason, source)
        return f"breaker '{self.name}' is forced open by {source} {span}: {reason}"

    def release(self: CircuitBreaker, *, source: str | None = None) -> str:
        """Lift a forced open: the breaker goes HALF_OPEN and trial calls decide the rest."""
        if self._state is not FORCED_OPEN:
            return (
                f"breaker '{self.name}' is {self._state.value}, not forced open; nothing to release"
            )
        self._transition(HALF_OPEN, "forced open released; admitting trial calls", source)
        return f"breaker '{self.name}' was released and is half-open"

    def disable(self: CircuitBreaker, *, source: str | None = None) -> str:
        """Let every call through and record nothing, until ``enable``."""
        if self._state is DISABLED:
            return f"breaker '{self.name}' is already disabled"
        self._transition(DISABLED, "disabled", source)
        return f"breaker '{self.name}' is disabled: every call is let through"

    def enable(self: CircuitBreaker, *, source: str | None = None) -> str:
        if self._state is not DISABLED:
            return f"breaker '{self.name}' is {self._state.value}, not disabled; nothing to enable"
        self._close("enabled", source)
        return f"breaker '{self.name}' is enabled and closed"
