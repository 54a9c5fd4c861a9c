"""A kept trace's spans as one bytes object, and back: what the trace keeper holds in memory
and hands to the archive. A bytes object is one object the garbage collector never visits,
where the SDK's spans are a dozen objects each."""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from telemetry.span_record import (
    STACKTRACE_LIMIT,
    STATUS_NAMES,
    SpanEventRecord,
    SpanRecord,
    plain_attributes,
    resource_attributes,
)
from telemetry.trace_merge import TraceBound, fitting

Span = ReadableSpan | SpanRecord
_STATUS_BY_VALUE = {code.value: name for code, name in STATUS_NAMES.items()}
_KIND_BY_VALUE = {kind.value: kind.name for kind in SpanKind}
# What one ``pickle.dump`` writes besides its object: protocol (2), frame (9), stop (1).
_DUMP_OPCODES = 12


def as_record(span: Span) -> SpanRecord:
    return span if isinstance(span, SpanRecord) else SpanRecord.from_readable_span(span)


def pack(spans: Sequence[Span]) -> bytes:
    """A trace's spans as one bytes object: what the trace keeper holds in memory and hands
    to ``offer``. Pickled, only in this process's memory (the file holds JSON). An SDK span
    is packed as a tuple of what it holds, without building its ``SpanRecord`` first: a
    kept trace is packed on the event loop, in an error storm for every failing chat, and
    most are never read; ``unpack`` builds the records. The resource, one dict shared by a
    process's spans, is pickled once per trace."""
    return pickle.dumps([_packed(span) for span in spans], protocol=5)


def pack_within(spans: Sequence[Span], bound: TraceBound) -> tuple[bytes, int]:
    """``pack(spans)``, within ``bound`` (spans, and bytes of the packed object): when they
    do not fit, the error spans and their ancestors are kept first, then the others, each
    group in the order given (``trace_merge.fitting``). Also how many spans it holds. A trace
    that fits costs nothing more than ``pack``: its count and size are at hand. One over is
    sorted out span by span, each measured by what it adds to the packed object."""
    packed = pack(spans)
    if len(spans) <= bound.spans and len(packed) <= bound.bytes:
        return packed, len(spans)
    records = [as_record(span) for span in spans]
    shapes = [(record.span_id, record.parent_span_id, record.is_error) for record in records]
    sizes = _added_sizes([_packed(record) for record in records])
    # The list's own opcodes: its frames (one each 64 KiB) and its appends (one each 1,000).
    room = bound.bytes - 16 - 9 * (bound.bytes // 65_536 + 1) - 2 * (len(spans) // 1000 + 1)
    while True:
        chosen = fitting(shapes, sizes, bound, room)
        packed = pack([records[index] for index in chosen])
        if len(packed) <= bound.bytes or not chosen:
            return packed, len(chosen)
        # What a span left out shared with the ones kept (a resource) is now theirs to hold.
        room -= len(packed) - bound.bytes


def _added_sizes(items: list[Any]) -> list[int]:
    """What each item adds to ``pickle.dumps(items)``: each is pickled after the ones
    before, by one pickler, so an object they share (a resource, a key) counts once, where
    they first hold it; less each dump's own opcodes (protocol, frame, stop)."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=5)
    sizes = []
    for item in items:
        start = buffer.tell()
        pickler.dump(item)  # the memo is kept from one dump to the next
        sizes.append(max(1, buffer.tell() - start - _DUMP_OPCODES))
    return sizes


def unpack(packed: bytes) -> list[SpanRecord]:
    return [
        SpanRecord.from_dict(item) if isinstance(item, dict) else _unpacked(item)
        for item in pickle.loads(packed)
    ]


def _packed(span: Span) -> tuple[Any, ...] | dict[str, Any]:
    if isinstance(span, SpanRecord):
        return span.to_dict()
    if type(span) is ReadableSpan:  # what the SDK hands a processor: read its fields directly
        context, parent, status, start = span._context, span._parent, span._status, span._start_time
        name, end, kind, resource = span._name, span._end_time, span._kind, span._resource
        attributes, events = span._attributes, span._events
        events = getattr(events, "_dq", events)  # the BoundedList's deque, without a copy
    else:
        context, parent, status, start = span.context, span.parent, span.status, span.start_time
        name, end, kind, resource = span.name, span.end_time, span.kind, span.resource
        attributes, events = span.attributes, span.events
    return (
        name,
        context.trace_id,
        context.span_id,
        parent.span_id if parent is not None else None,
        start or 0,
        end or start or 0,
        status.status_code.value,
        status.description or "",
        kind.value,
        _plain_dict(attributes),
        resource_attributes(resource),
        [(event.name, event.timestamp, _event_attributes(event)) for event in events or ()],
    )


def _unpacked(row: tuple[Any, ...]) -> SpanRecord:
    name, trace_id, span_id, parent, start, end, code, message, kind, attributes = row[:10]
    resource, events = row[10:]
    record = SpanRecord(
        name=name,
        trace_id=format(trace_id, "032x"),
        span_id=format(span_id, "016x"),
        parent_span_id=format(parent, "016x") if parent is not None else None,
        start_ns=start,
        end_ns=end,
        status_code=_STATUS_BY_VALUE[code],
        status_message=message,
        kind=_KIND_BY_VALUE[kind],
        attributes=plain_attributes(attributes),
        resource=resource,
        events=[SpanEventRecord(n, t, plain_attributes(a)) for n, t, a in events],
        service_name=str(resource.get("service.name", "unknown_service")),
    )
    record.redact()  # on the way out of memory: to a reader or the archive
    record.fill_exception()
    return record


def _plain_dict(attributes: Any) -> dict[str, Any]:
    if not attributes:
        return {}
    inner = getattr(attributes, "_dict", None)  # the SDK's BoundedAttributes' own dict
    return inner if isinstance(inner, dict) else dict(attributes)


def _event_attributes(event: Any) -> dict[str, Any]:
    plain = _plain_dict(event.attributes)
    stacktrace = plain.get("exception.stacktrace")
    if isinstance(stacktrace, str) and len(stacktrace) > STACKTRACE_LIMIT:
        plain = {**plain, "exception.stacktrace": stacktrace[:STACKTRACE_LIMIT]}
    return plain
