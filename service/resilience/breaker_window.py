"""The failure window of a circuit breaker: the outcomes of its last calls while closed and
its run of consecutive failures, which decide when it trips."""

from __future__ import annotations

from service.resilience.breaker_config import BreakerConfig

# Outcomes in the sliding window; EMPTY marks a slot not yet filled.
EMPTY, SUCCEEDED, SLOW, FAILED = 0, 1, 2, 3


class FailureWindow:
    """Outcomes of the last ``sliding_window_size`` calls with their failed and slow counts,
    and the last failure. ``record`` returns why the breaker trips now, or None; a clean
    close ``clear``s it all."""

    __slots__ = (
        "_config",
        "_minimum_calls",
        "_size",
        "_outcomes",
        "_cursor",
        "buffered",
        "failed_calls",
        "slow_calls",
        "consecutive_failures",
        "last_failure_at",
        "last_failure_at_wall",
        "last_error",
        "_unsettled",
        "settled",
    )

    def __init__(self, config: BreakerConfig) -> None:
        self._config = config
        # Copied out of the config: read on every call.
        self._minimum_calls = config.minimum_calls
        self._size = config.sliding_window_size
        self.clear()

    def clear(self) -> None:
        self._outcomes = bytearray(self._size)
        self._cursor = 0
        self.buffered = self.failed_calls = self.slow_calls = 0
        self.consecutive_failures = 0
        # Slots holding anything but a success; ``settled`` while none does and no failure
        # came since. A success then changes nothing (every slot is alike, so which one it
        # evicts does not matter): the breaker's common path only reads this flag.
        self._unsettled = self._size
        self.settled = False
        self.last_failure_at: float | None = None
        self.last_failure_at_wall: float | None = None
        self.last_error: str | None = None

    def note_failure(self, error: str, now: float, wall: float) -> None:
        """A failure in any state: it extends the run of consecutive failures."""
        self.consecutive_failures += 1
        self.settled = False
        self.last_failure_at, self.last_failure_at_wall, self.last_error = now, wall, error

    def record(self, outcome: int) -> str | None:
        """Put a closed breaker's outcome into the window (a failure noted first)."""
        outcomes, cursor = self._outcomes, self._cursor
        evicted = outcomes[cursor]
        if evicted != SUCCEEDED:
            self._unsettled -= 1
            if evicted == EMPTY:
                self.buffered += 1
            elif evicted == FAILED:
                self.failed_calls -= 1
            else:
                self.slow_calls -= 1
        outcomes[cursor] = outcome
        cursor += 1
        self._cursor = 0 if cursor == self._size else cursor
        if outcome != SUCCEEDED:
            self._unsettled += 1
            self.settled = False
        if outcome == FAILED:
            self.failed_calls += 1
            if self.consecutive_failures >= self._config.failure_threshold:
                return f"{self.consecutive_failures} consecutive failures, last: {self.last_error}"
            return self._rate_reached()
        self.consecutive_failures = 0
        if self._unsettled == 0:
            self.settled = True
        if outcome == SLOW:
            self.slow_calls += 1
        elif self.buffered != self._minimum_calls:
            # A success lowers the failure rate: the rates need judging only when the
            # window just reached minimum_calls.
            return None
        return self._rate_reached()

    def rates(self) -> tuple[float | None, float | None]:
        """The failure and slow-call rates, or None before the window holds minimum_calls."""
        buffered = self.buffered
        if buffered < self._minimum_calls:
            return None, None
        return round(self.failed_calls / buffered, 4), round(self.slow_calls / buffered, 4)

    def _rate_reached(self) -> str | None:
        buffered, config = self.buffered, self._config
        if buffered < self._minimum_calls:
            return None
        for what, count, threshold in (
            ("failure", self.failed_calls, config.failure_rate_threshold),
            ("slow-call", self.slow_calls, config.slow_call_rate_threshold),
        ):
            if count / buffered >= threshold:
                return (
                    f"{what} rate {count / buffered:.0%} over the last {buffered} calls "
                    f"reached the {threshold:.0%} threshold"
                )
        return None
