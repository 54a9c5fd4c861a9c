"""Circuit breaker states and configuration: an immutable value with named defaults."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from service.config_checks import LONGEST_OPEN_S


class TrialGate(Protocol):
    """A fleet's say in a half-open breaker's trials (see service.fleet): called, whether
    this replica may run a trial now; ``ready``, awaited before a call to a breaker that is
    not closed, asks the fleet first, within a short bound."""

    def __call__(self) -> bool: ...

    async def ready(self) -> None: ...


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    # Held open by an operator or an alert until released, reset or its TTL runs out.
    FORCED_OPEN = "forced_open"
    # Permits every call and records nothing.
    DISABLED = "disabled"

    @property
    def words(self) -> str:
        return in_words(self.value)


def in_words(state: str) -> str:
    """A state's value as a sentence or a table says it: "half-open", "forced open"."""
    return state.replace("_", " ").replace("half open", "half-open")


# The most each field takes: beyond these a breaker would keep more calls than it needs, or
# an agent out for longer than an operator would wait (a duration past a day is a typo).
COUNT_LIMITS = {
    "failure_threshold": 1000,
    "sliding_window_size": 10_000,
    "minimum_calls": 10_000,
    "half_open_max_calls": 1000,
    "half_open_success_threshold": 1000,
    "history_size": 10_000,
}
SECONDS_LIMITS = {
    "slow_call_duration_s": 86_400.0,
    "open_duration_s": LONGEST_OPEN_S,
    "max_open_duration_s": LONGEST_OPEN_S,
    "half_open_max_wait_s": 86_400.0,
}


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """When a breaker trips, how long it stays open and how it tests recovery.

    A CLOSED breaker trips on whichever comes first: ``failure_threshold`` consecutive
    failures, or, once the sliding window holds ``minimum_calls`` calls, a failure rate or a
    slow-call rate at or above its threshold.
    """

    # Consecutive failures that trip a closed breaker (the seed's threshold).
    failure_threshold: int = 5
    # Share of failed calls in the sliding window that trips the breaker.
    failure_rate_threshold: float = 0.5
    # The last N calls the failure and slow-call rates are computed over.
    sliding_window_size: int = 20
    # Rates are not judged until the window holds this many calls.
    minimum_calls: int = 10
    # A successful call that takes at least this long counts as slow; a slow half-open
    # trial reopens the breaker, since it does not prove recovery.
    slow_call_duration_s: float = 5.0
    # Share of slow calls in the window that trips the breaker; 1.0 trips only when every
    # call in a window of at least minimum_calls was slow.
    slow_call_rate_threshold: float = 1.0
    # How long the first trip keeps the breaker open.
    open_duration_s: float = 30.0
    # Each trip after a failed half-open trial multiplies the open duration by this, up to
    # max_open_duration_s; a clean close returns it to open_duration_s.
    open_backoff_multiplier: float = 2.0
    max_open_duration_s: float = 300.0
    # Trial calls admitted at once while half-open; the rest are rejected, never queued.
    half_open_max_calls: int = 1
    # Successful trial calls that close the breaker.
    half_open_success_threshold: int = 1
    # A trial that has not reported back after this long is abandoned and counts as a
    # failure, so a hung call cannot keep the breaker half-open.
    half_open_max_wait_s: float = 10.0
    # Errors that count against the breaker, decided by class; ignore_exceptions wins over
    # record_exceptions (callers put user-input validation errors there).
    record_exceptions: tuple[type[BaseException], ...] = (Exception,)
    ignore_exceptions: tuple[type[BaseException], ...] = ()
    # Transitions and operator actions kept for inspection.
    history_size: int = 100

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name, most in COUNT_LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
                problems.append(f"{name} must be a whole number from 1 to {most}, got {value!r}")
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                problems.append(f"{name} is a share of calls in (0, 1], got {value!r}")
        for name, most in SECONDS_LIMITS.items():
            value = getattr(self, name)
            # Not NaN, not 0, not past a day (a time that far ahead cannot be shown).
            if not 0 < value <= most:
                problems.append(
                    f"{name} must be a positive number of seconds, at most {most:g}, got {value!r}"
                )
        if not problems:
            if self.minimum_calls > self.sliding_window_size:
                problems.append(
                    f"minimum_calls ({self.minimum_calls}) cannot exceed sliding_window_size "
                    f"({self.sliding_window_size}): the rates would never be judged"
                )
            if self.max_open_duration_s < self.open_duration_s:
                problems.append(
                    f"max_open_duration_s ({self.max_open_duration_s}) must be at least "
                    f"open_duration_s ({self.open_duration_s})"
                )
        if not 1 <= self.open_backoff_multiplier <= 100:
            problems.append(
                "open_backoff_multiplier must be from 1 to 100, got "
                f"{self.open_backoff_multiplier!r}"
            )
        for name in ("record_exceptions", "ignore_exceptions"):
            classes = tuple(getattr(self, name))
            object.__setattr__(self, name, classes)
            for cls in classes:
                if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                    problems.append(f"{name} takes exception classes, got {cls!r}")
        if problems:
            raise ValueError("invalid breaker config: " + "; ".join(problems))

    def counts(self, exc: BaseException) -> bool:
        """Whether this error counts as a failure; otherwise the call is treated as ignored."""
        return not isinstance(exc, self.ignore_exceptions) and isinstance(
            exc, self.record_exceptions
        )
