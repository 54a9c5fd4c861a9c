"""The chat path's counters and its duration histogram are kept as plain numbers and read
at collection: exported as the same cumulative, monotonic sums an SDK counter gives, and the
same Prometheus series an SDK histogram gives, per label set."""

from __future__ import annotations

import threading

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

from service.resilience.instruments import (
    AGENT_DURATION_BUCKETS,
    BucketHistogram,
    CumulativeCount,
    seconds_histogram,
)


def test_counts_are_exported_as_a_cumulative_sum_per_label_set() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("t")
    calls = CumulativeCount(meter, "ers_agent_calls", "calls")
    calls.add(0, {"agent": "budget", "outcome": "failure"})  # exists from start-up, as 0

    def add_many() -> None:
        for _ in range(10_000):
            calls.add(1, {"agent": "budget", "outcome": "success"})

    threads = [threading.Thread(target=add_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    def exported() -> dict[tuple[str, str], int]:
        [metric] = reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics
        assert metric.name == "ers_agent_calls" and metric.data.is_monotonic
        return {
            (p.attributes["agent"], p.attributes["outcome"]): p.value
            for p in metric.data.data_points
        }

    assert exported() == {("budget", "success"): 40_000, ("budget", "failure"): 0}
    calls.add(1, {"agent": "budget", "outcome": "failure"})
    assert exported() == {("budget", "success"): 40_000, ("budget", "failure"): 1}


def _series(registry: CollectorRegistry, name: str) -> list[str]:
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if line.startswith(name))


def test_the_histogram_exports_the_series_the_sdk_histogram_exports() -> None:
    # On a bound (0.001, 0.25), between bounds, past the last one, and 0: each lands in the
    # bucket the SDK puts it in (upper bound inclusive), in its agent's series.
    values = [0.0, 0.0003, 0.001, 0.0011, 0.25, 0.3, 7.0, 11.0, 0.001]
    sdk_registry = CollectorRegistry()
    meter = MeterProvider(
        metric_readers=[PrometheusMetricReader(scope_info_enabled=False, registry=sdk_registry)]
    ).get_meter("t")
    sdk = seconds_histogram(meter, "ers_agent_call_duration", "d", AGENT_DURATION_BUCKETS)
    ours_registry = CollectorRegistry(auto_describe=True)
    ours = BucketHistogram(
        ours_registry, "ers_agent_call_duration_seconds", "d", AGENT_DURATION_BUCKETS, "agent"
    )
    for index, value in enumerate(values):
        agent = "budget" if index % 3 else "router"
        sdk.record(value, {"agent": agent})
        ours.record(value, agent)

    expected = _series(sdk_registry, "ers_agent_call_duration_seconds")
    assert len(expected) == 2 * (len(AGENT_DURATION_BUCKETS) + 3)
    assert _series(ours_registry, "ers_agent_call_duration_seconds") == expected
    # 0.0003 and twice 0.001: a value on a bound counts in that bound's bucket
    assert 'ers_agent_call_duration_seconds_bucket{agent="budget",le="0.001"} 3.0' in expected
