from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from bench.skipping_meter import SkippingMeterProvider


def metric_names(reader: InMemoryMetricReader) -> set[str]:
    data = reader.get_metrics_data()
    return {
        metric.name
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def test_skipped_instruments_record_nothing_and_the_rest_pass_through() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    meter = SkippingMeterProvider(
        provider, ["http.server.active_requests", "http.server.request.body.size"]
    ).get_meter("http", "1.0")

    meter.create_up_down_counter("http.server.active_requests").add(1, {"m": "GET"})
    meter.create_histogram("http.server.request.body.size").record(10, {"m": "GET"})
    meter.create_histogram(
        "http.server.request.duration", unit="s", explicit_bucket_boundaries_advisory=[0.1, 1.0]
    ).record(0.2, {"m": "GET"})
    meter.create_counter("requests").add(2)
    meter.create_observable_gauge("up", [lambda options: []])

    assert metric_names(reader) == {"http.server.request.duration", "requests"}
    provider.shutdown()
