"""Helpers for the telemetry tests: span records written by hand, and a real SDK tracer
provider (never the global one) whose finished spans land in an in-memory exporter."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode, Tracer

from service.incidents.store import IncidentStore
from telemetry.classifier import Classifier, load_rules
from telemetry.span_record import SpanRecord

_span_numbers = itertools.count(1)


def error_record(
    name: str = "agent.npa",
    exception_type: str = "RuntimeError",
    message: str = "boom",
    *,
    attributes: dict[str, Any] | None = None,
    resource: dict[str, Any] | None = None,
    trace_id: str = "0af7651916cd43dd8448eb211c80319c",
    status: str = "ERROR",
) -> SpanRecord:
    """A span of its own each call (its id and its time after the last one's), in one
    trace unless ``trace_id`` says otherwise."""
    resource = {"service.name": "ers", **(resource or {})}
    number = next(_span_numbers)
    return SpanRecord.from_dict(
        {
            "name": name,
            "traceId": trace_id,
            "spanId": f"{0xB7AD6B7169203331 + number:016x}",
            # A millisecond apart from 2023-11-14 on: times OTLP and the stores can hold.
            "startNs": 1_700_000_000_000_000_000 + number * 1_000_000,
            "endNs": 1_700_000_000_000_000_000 + number * 1_000_000 + 500_000,
            "status": {"code": status, "message": f"{exception_type}: {message}"},
            "attributes": attributes or {},
            "resource": resource,
            "events": [
                {
                    "name": "exception",
                    "timeNs": 1,
                    "attributes": {"exception.type": exception_type, "exception.message": message},
                }
            ],
        }
    )


@pytest.fixture(scope="session")
def default_classifier() -> Classifier:
    return load_rules()


@dataclass
class Tracing:
    provider: TracerProvider
    exporter: InMemorySpanExporter

    @property
    def tracer(self) -> Tracer:
        return self.provider.get_tracer("tests")

    def finished(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    provider = TracerProvider(resource=Resource.create({"service.name": "ers"}))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider, exporter)
    provider.shutdown()


def fail_span(span: Any, error: BaseException) -> None:
    """What the service's guard does with a failed call."""
    span.record_exception(error)
    span.set_attribute("error.type", type(error).__qualname__)
    span.set_attribute(
        "ers.exception.bases",
        [c.__name__ for c in type(error).__mro__[1:] if c not in (object, BaseException)],
    )
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


class HeldStore(IncidentStore):
    """Each write waits (10 s at most) until ``release`` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = threading.Event()

    def record_errors(self, items, sent=()):  # type: ignore[override]
        self.release.wait(10)
        return super().record_errors(items, sent)
