"""What a breaker hands out and raises: permits for single calls, and the exceptions of a
rejected call or a refused reset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.errors import ErsError
from service.resilience.breaker_config import BreakerState

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


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    """What the agent's health probe said just now: ``error`` is None when it passed."""

    error: str | None = None


def describe_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if len(text) > LAST_ERROR_MAX_CHARS:
        text = text[: LAST_ERROR_MAX_CHARS - 1] + "…"
    return text


class Permit:
    """The right to make one call; reports its outcome once, later reports are no-ops."""

    __slots__ = ("_breaker", "_epoch", "_started_at", "_pending")

    def __init__(self, breaker: CircuitBreaker, epoch: int, started_at: float = 0.0) -> None:
        self._breaker = breaker
        self._epoch = epoch
        self._started_at = started_at
        self._pending = True

    def record_success(self, duration_s: float = 0.0) -> bool:
        """True when this success opened the breaker (a slow call, or the window filling
        at a failure rate over the line)."""
        if self._pending:
            self._pending = False
            return self._breaker._on_success(self, duration_s)
        return False

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
