"""The anchor's HTTP instrumentation without the metrics ERS does not record either.

A meter provider that hands out no-op instruments for metrics nobody reads: instrumentation
libraries create every instrument their conventions name; a view with ``DropAggregation``
hides one from the exporter but still costs a measurement (attributes cleaned and hashed) on
every request. Handing the library a no-op instrument instead costs nothing per request, and
the metric simply does not exist. ``bench.anchor_app`` instruments the minimal app through
it, so the anchor records what ERS records (the request-duration histogram) and no more.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.metrics import (
    CallbackT,
    Counter,
    Histogram,
    Meter,
    MeterProvider,
    NoOpCounter,
    NoOpHistogram,
    NoOpUpDownCounter,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)

# HTTP instrumentation metrics no dashboard or alert of ERS reads.
UNUSED_HTTP_METRICS = (
    "http.server.active_requests",
    "http.server.request.body.size",
    "http.server.response.body.size",
)


class SkippingMeterProvider(MeterProvider):
    """Delegates to ``provider`` except for the synchronous instruments named in ``skip``."""

    def __init__(self, provider: MeterProvider, skip: Sequence[str]) -> None:
        self._provider = provider
        self._skip = frozenset(skip)

    def get_meter(
        self,
        name: str,
        version: str | None = None,
        schema_url: str | None = None,
        attributes: Any = None,
    ) -> Meter:
        meter = self._provider.get_meter(name, version, schema_url, attributes)
        return SkippingMeter(meter, self._skip)


class SkippingMeter(Meter):
    def __init__(self, meter: Meter, skip: frozenset[str]) -> None:
        super().__init__(meter.name, meter.version, meter.schema_url)
        self._meter = meter
        self._skip = skip

    def _pick(self, name: str, create: Callable[[], Any], no_op: Callable[[str], Any]) -> Any:
        return no_op(name) if name in self._skip else create()

    def create_counter(self, name: str, unit: str = "", description: str = "") -> Counter:
        return self._pick(
            name, lambda: self._meter.create_counter(name, unit, description), NoOpCounter
        )

    def create_up_down_counter(
        self, name: str, unit: str = "", description: str = ""
    ) -> UpDownCounter:
        return self._pick(
            name,
            lambda: self._meter.create_up_down_counter(name, unit, description),
            NoOpUpDownCounter,
        )

    def create_histogram(
        self,
        name: str,
        unit: str = "",
        description: str = "",
        *,
        explicit_bucket_boundaries_advisory: Sequence[float] | None = None,
    ) -> Histogram:
        return self._pick(
            name,
            lambda: self._meter.create_histogram(
                name,
                unit,
                description,
                explicit_bucket_boundaries_advisory=explicit_bucket_boundaries_advisory,
            ),
            NoOpHistogram,
        )

    # Asynchronous instruments cost nothing per request; they always pass through.
    def create_observable_counter(
        self,
        name: str,
        callbacks: Sequence[CallbackT] | None = None,
        unit: str = "",
        description: str = "",
    ) -> ObservableCounter:
        return self._meter.create_observable_counter(name, callbacks, unit, description)

    def create_observable_gauge(
        self,
        name: str,
        callbacks: Sequence[CallbackT] | None = None,
        unit: str = "",
        description: str = "",
    ) -> ObservableGauge:
        return self._meter.create_observable_gauge(name, callbacks, unit, description)

    def create_observable_up_down_counter(
        self,
        name: str,
        callbacks: Sequence[CallbackT] | None = None,
        unit: str = "",
        description: str = "",
    ) -> ObservableUpDownCounter:
        return self._meter.create_observable_up_down_counter(name, callbacks, unit, description)
