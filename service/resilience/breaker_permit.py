"""What a breaker hands out and raises: permits for single calls, and the exceptions of a
rejected call or a refused reset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.errors import ErsError
from service.resilience.breaker_config import BreakerState
from service.resilience.breaker_window import SUCCEEDED
from telemetry.exception_events import described

CLOSED = BreakerState.CLOSED

if TYPE_CHECKING:
    from service.resilience.breaker import CircuitBreaker

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

    @classmethod
    def unless_cause_gone(
        cls,
        name: str,
        state: str,
        probe: ProbeOutcome | None,
        failure_age_s: float | None,
        last_error: str | None,
        open_duration_s: float,
    ) -> ResetRefused | None:
        """Why a breaker is not reset without force: a health ``probe`` run just now still
        fails (whatever its state: a reset says the agent is fit for calls), or, without
        one, an open (or ``forced`` open) breaker's last failure came within the open
        duration (``failure_age_s`` ago), so its cause may still be there."""
        words = BreakerState(state).words
        if probe is not None and probe.error is not None:
            return cls(
                f"breaker '{name}' is {words} and its health probe still fails "
                f"({probe.error}); fix the cause or reset with force"
            )
        recent = failure_age_s is not None and failure_age_s < open_duration_s
        if probe is None and state in ("open", "forced_open") and recent:
            forced = state == "forced_open"
            next_step = "release it for a trial" if forced else "wait for the half-open trial"
            return cls(
                f"breaker '{name}' is {words} and its last failure was {failure_age_s:.1f} s "
                f"ago ({last_error}); {next_step} or reset with force"
            )
        return None


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    """What the agent's health probe said just now: ``error`` is None when it passed."""

    error: str | None = None


def describe_error(exc: BaseException) -> str:
    text = described(exc)
    if len(text) > LAST_ERROR_MAX_CHARS:
        text = text[: LAST_ERROR_MAX_CHARS - 1] + "…"
    return text


class Permit:
    """The right to make one call; reports its outcome once, later reports are no-ops."""

    # The breaker until the outcome is reported, then None: one slot serves as both the
    # link and the "still pending" flag, which keeps the closed-state path to two slots.
    __slots__ = ("_breaker", "_epoch")

    _breaker: CircuitBreaker | None
    _epoch: int

    @classmethod
    def of(cls, breaker: CircuitBreaker, epoch: int) -> Permit:
        permit = cls()
        permit._breaker, permit._epoch = breaker, epoch
        return permit

    def record_success(self, duration_s: float = 0.0) -> bool:
        """True when this success opened the breaker (a slow call, or the window filling
        at a failure rate over the line)."""
        breaker = self._breaker
        if breaker is None:
            return False
        self._breaker = None
        if (
            self._epoch == breaker._epoch
            and breaker._state is CLOSED
            and duration_s < breaker._slow_call_duration_s
        ):
            # Nearly every call ends here: a fast success of a closed breaker whose window
            # holds only successes changes nothing.
            window = breaker._window
            if window.settled:
                return False
            trip = window.record(SUCCEEDED)
            if trip is None:
                return False
            breaker._trip(trip)
            return True
        return breaker._on_success(self, duration_s)

    def record_failure(self, exc: BaseException, duration_s: float = 0.0) -> None:
        """Count ``exc`` against the breaker, or treat the call as ignored if its class
        does not count. A failure that says nothing of the agent's health (a rate limit, a
        request it refused: ``counts_against_breaker`` False) frees the permit. A failure
        counts the same however long it took: ``duration_s`` only keeps the signature
        symmetric with ``record_success``."""
        if not getattr(exc, "counts_against_breaker", True):
            self.release()
            return
        breaker = self._breaker
        if breaker is not None:
            self._breaker = None
            breaker._on_failure(self, exc, duration_s)

    def release(self) -> None:
        """The call was abandoned without an outcome: free the permit, count nothing."""
        breaker = self._breaker
        if breaker is not None:
            self._breaker = None
            breaker._on_release(self)


class TrialPermit(Permit):
    """A half-open trial's permit: it also knows when it was taken, so that a trial hung
    past the wait can be abandoned."""

    __slots__ = ("_started_at",)

    def __init__(self, breaker: CircuitBreaker, epoch: int, started_at: float) -> None:
        self._breaker, self._epoch, self._started_at = breaker, epoch, started_at
