"""The chat path's counters are kept as integers and read at collection: exported as the
same cumulative, monotonic sums an SDK counter gives, per label set."""

from __future__ import annotations

import threading

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from service.resilience.instruments import CumulativeCount


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
