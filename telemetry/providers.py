"""OpenTelemetry bootstrap: one resource, a tracer provider and a meter provider.

Providers are built per application (not set globally) so that several can live in one
process, as tests do. Metrics are read by the Prometheus reader into a registry of their own
that ``GET /metrics`` renders. Traces go to an OTLP/HTTP exporter only when
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces-specific variable) is set.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field

from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("ers.telemetry")

INSTRUMENTATION_SCOPE = "ers"
PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_LATEST


def otlp_endpoint_configured() -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


@dataclass
class Telemetry:
    """The providers of one application and the handles the service uses."""

    resource: Resource
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    registry: CollectorRegistry
    enabled: bool
    span_processors: list[SpanProcessor] = field(default_factory=list)

    @property
    def tracer(self) -> trace.Tracer:
        return self.tracer_provider.get_tracer(INSTRUMENTATION_SCOPE)

    @property
    def meter(self) -> metrics.Meter:
        return self.meter_provider.get_meter(INSTRUMENTATION_SCOPE)

    def add_span_processor(self, processor: SpanProcessor) -> None:
        self.tracer_provider.add_span_processor(processor)
        self.span_processors.append(processor)

    def render_metrics(self) -> bytes:
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        """Flush and stop both providers; safe to call twice."""
        self.tracer_provider.force_flush(timeout_millis=5000)
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown(timeout_millis=5000)


def configured_instance_id() -> str | None:
    """The ``service.instance.id`` set in ``OTEL_RESOURCE_ATTRIBUTES`` (compose names each
    replica so), which an attribute given in code would override."""
    value = OTELResourceDetector().detect().attributes.get("service.instance.id")
    return str(value) if value else None


def build_telemetry(
    service_name: str,
    service_version: str,
    *,
    enabled: bool = True,
) -> Telemetry:
    """Build the providers. With ``enabled=False`` spans are not sampled (a no-op cost)."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

    resource = Resource.create(
        {
            "service.name": service_name,
            "service.version": service_version,
            "service.instance.id": configured_instance_id() or str(uuid.uuid4()),
        }
    )
    sampler = None if enabled else ParentBased(ALWAYS_OFF)
    if not enabled:
        log.warning(
            "telemetry is off: no spans, so no failing call becomes an incident and nothing "
            "responds to one; /metrics has no request, chat or agent figures for the alert rules"
        )
    tracer_provider = (
        TracerProvider(resource=resource)
        if sampler is None
        else TracerProvider(resource=resource, sampler=sampler)
    )
    registry = CollectorRegistry(auto_describe=True)
    reader = PrometheusMetricReader(scope_info_enabled=False, registry=registry)
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=[reader],
        # The Prometheus exposition carries no exemplars: collecting them would be pure cost.
        exemplar_filter=AlwaysOffExemplarFilter(),
    )
    telemetry = Telemetry(resource, tracer_provider, meter_provider, registry, enabled)
    if enabled and otlp_endpoint_configured():
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        telemetry.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return telemetry
