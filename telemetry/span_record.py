"""A plain, serialisable record of one finished span.

Built from an SDK ``ReadableSpan`` (spans of this process) or from an OTLP protobuf span
(spans other services send through the intake), so that classification, the incident store
and the trace keeper never depend on where a span came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from telemetry.redaction import redact_attributes, redacted_text

# Attribute the service sets on a span when it records an in-process exception: the names of
# the exception's base classes (most specific first), so rules can match a family of errors.
EXCEPTION_BASES_ATTRIBUTE = "ers.exception.bases"
EXCEPTION_EVENT = "exception"
# Stack traces are the bulk of an exception event and no rule reads them; a capped prefix is
# enough to recognise the error when reading a stored record.
STACKTRACE_LIMIT = 2000
# A span's name, its service's and its exception's type, as other services send them (OTLP
# bounds nothing): longer ones are cut, as the collector's transform cuts a name.
NAME_LIMIT = 256

STATUS_NAMES = {StatusCode.UNSET: "UNSET", StatusCode.OK: "OK", StatusCode.ERROR: "ERROR"}
OTLP_STATUS_NAMES = {0: "UNSET", 1: "OK", 2: "ERROR"}
OTLP_KIND_NAMES = {
    0: "UNSPECIFIED",
    1: "INTERNAL",
    2: "SERVER",
    3: "CLIENT",
    4: "PRODUCER",
    5: "CONSUMER",
}


@dataclass(slots=True)
class SpanEventRecord:
    name: str
    time_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "timeNs": self.time_ns, "attributes": self.attributes}


@dataclass(slots=True)
class SpanRecord:
    name: str
    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16 lowercase hex digits
    parent_span_id: str | None
    start_ns: int
    end_ns: int
    status_code: str  # UNSET | OK | ERROR
    status_message: str = ""
    kind: str = "INTERNAL"
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    events: list[SpanEventRecord] = field(default_factory=list)
    service_name: str = "unknown_service"
    # Taken from the last exception event, else from ``error.type`` and the status message.
    exception_type: str = ""
    exception_message: str = ""
    # Sent to the OTLP intake: another process's span, whatever its service.name says (one
    # calling itself ``ers`` is not this process). Neither stored nor compared: it decides
    # what the responder may do with the failure as it arrives.
    received: bool = field(default=False, compare=False)

    @property
    def is_error(self) -> bool:
        return self.status_code == "ERROR"

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    @property
    def exception_bases(self) -> tuple[str, ...]:
        bases = self.attributes.get(EXCEPTION_BASES_ATTRIBUTE)
        if isinstance(bases, str):
            return (bases,)
        return tuple(bases) if bases else ()

    @classmethod
    def from_readable_span(cls, span: ReadableSpan) -> SpanRecord:
        context = span.context
        parent = span.parent
        status = span.status
        resource = resource_attributes(span.resource)
        events = [
            SpanEventRecord(event.name, event.timestamp, plain_attributes(event.attributes))
            for event in span.events
        ]
        record = cls(
            name=span.name,
            trace_id=format(context.trace_id, "032x"),
            span_id=format(context.span_id, "016x"),
            parent_span_id=format(parent.span_id, "016x") if parent is not None else None,
            start_ns=span.start_time or 0,
            end_ns=span.end_time or span.start_time or 0,
            status_code=STATUS_NAMES[status.status_code],
            status_message=status.description or "",
            kind=span.kind.name,
            attributes=plain_attributes(getattr(span, "_attributes", None) or span.attributes),
            resource=resource,
            events=events,
            service_name=str(resource.get("service.name", "unknown_service")),
        )
        record.redact()
        record.fill_exception()
        return record

    @classmethod
    def from_otlp(cls, span: Any, resource: Mapping[str, Any]) -> SpanRecord:
        """From an ``opentelemetry.proto.trace.v1.trace_pb2.Span`` of another service and
        its resource's attributes (already converted with ``otlp_attributes``), with the
        secrets it may carry redacted (``telemetry.redaction``)."""
        events = [
            SpanEventRecord(event.name, event.time_unix_nano, otlp_attributes(event.attributes))
            for event in span.events
        ]
        record = cls(
            name=span.name[:NAME_LIMIT],
            trace_id=span.trace_id.hex(),
            span_id=span.span_id.hex(),
            parent_span_id=span.parent_span_id.hex() or None,
            start_ns=span.start_time_unix_nano,
            end_ns=span.end_time_unix_nano,
            status_code=OTLP_STATUS_NAMES.get(span.status.code, "UNSET"),
            status_message=span.status.message,
            kind=OTLP_KIND_NAMES.get(span.kind, "UNSPECIFIED"),
            attributes=otlp_attributes(span.attributes),
            resource=dict(resource),
            events=events,
            service_name=str(resource.get("service.name", "unknown_service"))[:NAME_LIMIT],
            received=True,
        )
        record.redact()
        record.fill_exception()
        return record

    def redact(self) -> None:
        """Take out, in place, the secrets the span may carry (``telemetry.redaction``): a
        service's, or this process's own, whose agents' code (and the instrumentations it
        uses, capturing headers as the environment says) is the operators'."""
        for found in (self.attributes, *(event.attributes for event in self.events)):
            redact_attributes(found)
        self.status_message = redacted_text(self.status_message)
        # A name may be a URL (a client span named by what it fetched): a message without
        # words is made of it (GET https://...: HTTP 500).
        self.name = redacted_text(self.name)

    def fill_exception(self) -> None:
        for event in reversed(self.events):
            if event.name == EXCEPTION_EVENT:
                self.exception_type = str(event.attributes.get("exception.type", ""))[:NAME_LIMIT]
                self.exception_message = str(event.attributes.get("exception.message", ""))
                stacktrace = event.attributes.get("exception.stacktrace")
                if isinstance(stacktrace, str) and len(stacktrace) > STACKTRACE_LIMIT:
                    event.attributes["exception.stacktrace"] = stacktrace[:STACKTRACE_LIMIT]
                return
        self.exception_type = str(self.attributes.get("error.type", ""))[:NAME_LIMIT]
        prefix, separator, rest = self.status_message.partition(": ")
        if separator and (not self.exception_type or prefix == self.exception_type):
            self.exception_type = self.exception_type or prefix[:NAME_LIMIT]
            self.exception_message = rest
        else:
            self.exception_message = self.status_message

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "traceId": self.trace_id,
            "spanId": self.span_id,
            "parentSpanId": self.parent_span_id,
            "startNs": self.start_ns,
            "endNs": self.end_ns,
            "status": {"code": self.status_code, "message": self.status_message},
            "kind": self.kind,
            "attributes": self.attributes,
            "resource": self.resource,
            "events": [event.to_dict() for event in self.events],
            "serviceName": self.service_name,
            "exception": {"type": self.exception_type, "message": self.exception_message},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpanRecord:
        """The inverse of ``to_dict``; also reads hand-written records (``ers classify``),
        where only ``name`` is required, and the spans of a kept trace's tree (``ers trace
        -o json``: ``service``, ``start``, ``end``)."""
        status = data.get("status") or {}
        exception = data.get("exception") or {}
        resource = dict(data.get("resource") or {})
        record = cls(
            name=str(data["name"]),
            trace_id=str(data.get("traceId") or "0" * 32),
            span_id=str(data.get("spanId") or "0" * 16),
            parent_span_id=data.get("parentSpanId"),
            start_ns=int(data.get("startNs") or data.get("start") or 0),
            end_ns=int(data.get("endNs") or data.get("end") or data.get("startNs") or 0),
            status_code=str(status.get("code", "ERROR")).upper(),
            status_message=str(status.get("message", "")),
            kind=str(data.get("kind", "INTERNAL")),
            attributes=dict(data.get("attributes") or {}),
            resource=resource,
            events=[
                SpanEventRecord(
                    str(event["name"]),
                    int(event.get("timeNs", 0)),
                    dict(event.get("attributes") or {}),
                )
                for event in data.get("events") or []
            ],
            service_name=str(
                data.get("serviceName")
                or data.get("service")
                or resource.get("service.name", "unknown_service")
            ),
        )
        if exception:
            record.exception_type = str(exception.get("type", ""))
            record.exception_message = str(exception.get("message", ""))
        else:
            record.fill_exception()
        return record


_last_resource: tuple[Any, dict[str, Any]] = (None, {})


def resource_attributes(resource: Any) -> dict[str, Any]:
    """A process has one resource: convert it once and share the dict (records never
    change their resource)."""
    global _last_resource
    known, converted = _last_resource
    if resource is known:
        return converted
    converted = plain_attributes(resource.attributes) if resource is not None else {}
    _last_resource = (resource, converted)
    return converted


def plain_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """SDK attributes with tuples turned into lists, so a record survives a JSON round trip
    unchanged."""
    if not attributes:
        return {}
    # The SDK's BoundedAttributes iterates through the mapping ABC, item by item: several
    # times slower than the plain dict inside it, which no one writes once a span ended.
    inner = getattr(attributes, "_dict", None)
    items = (inner if isinstance(inner, dict) else attributes).items()
    return {key: list(value) if isinstance(value, tuple) else value for key, value in items}


def otlp_attributes(key_values: Sequence[Any]) -> dict[str, Any]:
    """OTLP ``KeyValue`` list → plain dict."""
    return {kv.key: otlp_value(kv.value) for kv in key_values}


def otlp_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [otlp_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return otlp_attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)
