from __future__ import annotations

import math
import random

import pytest

from service.resilience.call_stats import BUCKET_RATIO, CallStats


def exact_percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def test_percentiles_match_direct_computation_within_a_bucket() -> None:
    now = [1_000_000.0]
    stats = CallStats(clock=lambda: now[0])
    rng = random.Random(7)
    latencies = []
    for i in range(20_000):
        latency = rng.lognormvariate(math.log(0.02), 0.8)
        latencies.append(latency)
        outcome = "failure" if i % 10 == 0 else "success"
        stats.record("nutrition", outcome, latency)
        if i % 1000 == 0:
            now[0] += 60  # spread over 20 minutes
    summary = stats.summary(1, "nutrition")
    assert summary.requests == 20_000
    assert summary.errors == 2_000 and summary.fallbacks == 2_000
    for q, got in ((0.5, summary.p50_ms), (0.95, summary.p95_ms), (0.99, summary.p99_ms)):
        want = exact_percentile(latencies, q) * 1000
        assert want <= got <= want * BUCKET_RATIO + 1e-9, (q, want, got)
    assert summary.average_ms == pytest.approx(sum(latencies) / len(latencies) * 1000, abs=0.001)


def test_time_range_excludes_older_minutes_and_the_ring_forgets() -> None:
    now = [0.0]
    stats = CallStats(clock=lambda: now[0])
    stats.record("budget", "success", 0.01)
    now[0] += 2 * 3600
    stats.record("budget", "timeout", 0.5)
    assert stats.summary(1, "budget").requests == 1
    assert stats.summary(3, "budget").requests == 2
    assert stats.summary(3).errors == 1
    now[0] += 168 * 3600  # a full ring later the old slots are reused, not summed
    stats.record("budget", "success", 0.01)
    assert stats.summary(168, "budget").requests == 1


def test_range_is_bounded() -> None:
    with pytest.raises(ValueError):
        CallStats().summary(169)
    assert CallStats().summary(1, "nobody").requests == 0
