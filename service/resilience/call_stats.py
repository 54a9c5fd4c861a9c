"""Per-minute aggregates of agent calls, in fixed memory, for the metrics summary.

Each agent has a ring of one slot per minute for the longest range served (168 hours):
calls, errors, fallbacks and a latency histogram with log-spaced buckets. A summary over
the last N hours adds up the slots, so its cost does not grow with traffic, and its
percentiles are exact to within one bucket (a ratio of 1.25).
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass

MAX_HOURS = 168
SLOTS = MAX_HOURS * 60
# Latency buckets: upper bounds from 0.1 ms growing by 25% up to about a minute.
BUCKET_RATIO = 1.25
BUCKET_FIRST_S = 0.0001
BUCKET_COUNT = 1 + math.ceil(math.log(60 / BUCKET_FIRST_S) / math.log(BUCKET_RATIO))
BUCKET_BOUNDS = [BUCKET_FIRST_S * BUCKET_RATIO**i for i in range(BUCKET_COUNT)]
_LOG_RATIO = math.log(BUCKET_RATIO)
ERROR_OUTCOMES = frozenset({"failure", "timeout"})
# "refused": a remote agent's 429 or 400, answered by its fallbacks, yet no error of the agent.
DEGRADED_OUTCOMES = frozenset({"failure", "timeout", "rejected", "refused"})


def bucket_of(seconds: float) -> int:
    if seconds <= BUCKET_FIRST_S:
        return 0
    return min(BUCKET_COUNT - 1, math.ceil(math.log(seconds / BUCKET_FIRST_S) / _LOG_RATIO))


class _Ring:
    """One agent's minutes: ``minute_of[slot]`` says which minute a slot currently holds."""

    __slots__ = ("minute_of", "calls", "errors", "fallbacks", "latency_sum", "histogram")

    def __init__(self) -> None:
        self.minute_of = array("q", [-1]) * SLOTS
        self.calls = array("I", [0]) * SLOTS
        self.errors = array("I", [0]) * SLOTS
        self.fallbacks = array("I", [0]) * SLOTS
        self.latency_sum = array("d", [0.0]) * SLOTS
        self.histogram = array("I", [0]) * (SLOTS * BUCKET_COUNT)

    def slot_for(self, minute: int) -> int:
        slot = minute % SLOTS
        if self.minute_of[slot] != minute:
            self.minute_of[slot] = minute
            self.calls[slot] = self.errors[slot] = self.fallbacks[slot] = 0
            self.latency_sum[slot] = 0.0
            base = slot * BUCKET_COUNT
            self.histogram[base : base + BUCKET_COUNT] = array("I", [0]) * BUCKET_COUNT
        return slot


@dataclass(frozen=True)
class Summary:
    requests: int
    errors: int
    fallbacks: int
    average_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "errorRate": round(self.error_rate, 4),
            "fallbacks": self.fallbacks,
            "avgResponseMs": self.average_ms,
            "p50Ms": self.p50_ms,
            "p95Ms": self.p95_ms,
            "p99Ms": self.p99_ms,
        }


class CallStats:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._rings: dict[str, _Ring] = {}

    def record(self, agent: str, outcome: str, duration_s: float) -> None:
        ring = self._rings.get(agent)
        if ring is None:
            ring = self._rings[agent] = _Ring()
        slot = ring.slot_for(int(self._clock() // 60))
        ring.calls[slot] += 1
        if outcome in ERROR_OUTCOMES:
            ring.errors[slot] += 1
        if outcome in DEGRADED_OUTCOMES:
            ring.fallbacks[slot] += 1
        ring.latency_sum[slot] += duration_s
        ring.histogram[slot * BUCKET_COUNT + bucket_of(duration_s)] += 1

    def agents(self) -> list[str]:
        return sorted(self._rings)

    def summary(self, hours: float, agent: str | None = None) -> Summary:
        """Totals over the last ``hours`` (1..168) for one agent, or all agents."""
        if not 0 < hours <= MAX_HOURS:
            raise ValueError(f"hours must be in (0, {MAX_HOURS}]")
        now_minute = int(self._clock() // 60)
        first_minute = now_minute - int(hours * 60) + 1
        rings = [self._rings[agent]] if agent in self._rings else []
        if agent is None:
            rings = list(self._rings.values())
        calls = errors = fallbacks = 0
        latency = 0.0
        histogram = [0] * BUCKET_COUNT
        for ring in rings:
            for minute in range(first_minute, now_minute + 1):
                slot = minute % SLOTS
                if ring.minute_of[slot] != minute or not ring.calls[slot]:
                    continue
                calls += ring.calls[slot]
                errors += ring.errors[slot]
                fallbacks += ring.fallbacks[slot]
                latency += ring.latency_sum[slot]
                base = slot * BUCKET_COUNT
                for i, count in enumerate(ring.histogram[base : base + BUCKET_COUNT]):
                    if count:
                        histogram[i] += count
        return Summary(
            requests=calls,
            errors=errors,
            fallbacks=fallbacks,
            average_ms=round(latency / calls * 1000, 3) if calls else None,
            p50_ms=_percentile_ms(histogram, calls, 0.50),
            p95_ms=_percentile_ms(histogram, calls, 0.95),
            p99_ms=_percentile_ms(histogram, calls, 0.99),
        )


def _percentile_ms(histogram: list[int], total: int, q: float) -> float | None:
    """The upper bound of the bucket holding the q-th call (nearest-rank)."""
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for i, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return round(BUCKET_BOUNDS[i] * 1000, 3)
    return round(BUCKET_BOUNDS[-1] * 1000, 3)
