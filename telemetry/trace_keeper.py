"""Keeps every span of the traces that contained an error, for inspection after the fact.

A trace's spans wait in a bounded pending area until its fate is known: its local root span
ended, or it lingered too long. Traces with an error move to the kept area, which holds at
most ``span_budget`` spans and evicts the oldest traces first; the others are dropped. One
kept trace holds at most what its archived row does (``trace_merge.TraceBound``, and no more
spans than the budget): eviction never takes the last trace, and one that keeps receiving
spans (late spans, or a sender repeating one trace id) would otherwise grow without end.

``on_end`` only appends a reference to the finished span under a lock (no copying, no
conversion) while its trace is pending; a trace that is kept is packed into one bytes object
(``trace_packing.pack``), which the garbage collector never has to visit. Spans other
services send to the OTLP intake arrive as records (``keep_records``) and are kept the same
way. A trace no longer in memory is read from the archive, when there is one.

What goes to the archive: the kept traces something names (``name``: an incident names its
newest traces), written at most once a second (``archive_named``, on the archive's thread), and
on shutdown every kept trace not written yet. An error storm keeps hundreds of traces a second
in memory, but its incident names twenty at any time, and only those need to outlive a kill;
writing all of them was most of what a storm cost the healthy requests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import StatusCode

from telemetry.prompt_read import PromptRead
from telemetry.span_record import SpanRecord
from telemetry.trace_archive import TraceArchive
from telemetry.trace_merge import TraceBound
from telemetry.trace_packing import as_record, pack_within, unpack

ERROR = StatusCode.ERROR


KeptSpan = ReadableSpan | SpanRecord


@dataclass(slots=True)
class _Kept:
    # The spans packed into one bytes object, which the garbage collector never visits,
    # where the SDK's spans are a dozen objects each: an error storm keeps thousands of
    # traces, and collecting them paused every request for tens of milliseconds.
    packed: bytes
    spans: int

    @classmethod
    def of(cls, spans: Sequence[KeptSpan], bound: TraceBound) -> _Kept:
        """The spans within ``bound``: checked by their count and the packed size, at hand
        (a chat's trace costs nothing more); only a trace over it is sorted out."""
        return cls(*pack_within(spans, bound))


@dataclass(slots=True)
class _Pending:
    started: float
    spans: list[KeptSpan] = field(default_factory=list)
    has_error: bool = False


class TraceKeeper(SpanProcessor):
    def __init__(
        self,
        *,
        span_budget: int = 20_000,
        pending_span_limit: int = 10_000,
        linger_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        archive: TraceArchive | None = None,
        bound: TraceBound | None = None,
    ) -> None:
        self.span_budget = span_budget
        # The most one kept trace holds: its archived row's bound (``archive.bound``, unless
        # given), within the budget.
        bound = bound or (archive.bound if archive is not None else TraceBound())
        self.bound = TraceBound(min(bound.spans, span_budget), bound.bytes)
        self.archive = archive
        # The archive's spans of a trace held here: waited for briefly (``prompt_read``).
        self._prompt_read = PromptRead(archive.get) if archive is not None else None
        self.pending_span_limit = pending_span_limit
        self.linger_s = linger_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._pending_spans = 0
        self._kept: OrderedDict[int, _Kept] = OrderedDict()
        self._kept_spans = 0
        self._next_sweep = clock() + linger_s
        self.traces_kept = 0
        self.traces_evicted = 0
        self.traces_dropped = 0
        # Spans of kept traces left out by ``bound``.
        self.spans_left_out = 0
        # Traces named to be written, by who names them (only the newest naming counts).
        self._named: dict[str, Sequence[str]] = {}
        # Named while still pending: written when they settle.
        self._wanted: set[int] = set()
        # Written to the archive: a late span of one writes it again.
        self._archived: OrderedDict[int, None] = OrderedDict()
        # Named, but the writer was behind and could not take them: written at the stop.
        self._behind: OrderedDict[int, None] = OrderedDict()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        trace_id = span.context.trace_id
        is_error = span.status.status_code is ERROR
        parent = span.parent
        with self._lock:
            kept = self._kept.get(trace_id)
            if kept is not None:  # a late span of a trace already kept (rare)
                kept = self._join(trace_id, kept, [*unpack(kept.packed), span])
                self._evict_over_budget()
                if self.archive is not None and trace_id in self._archived:
                    self.archive.offer(trace_id, kept.packed)
                return
            pending = self._pending.get(trace_id)
            is_root = parent is None or parent.is_remote
            if pending is None:
                if is_root and not is_error:  # a clean trace of one span: nothing to keep
                    self.traces_dropped += 1
                    return
                now = self._clock()
                if self._pending and now >= self._next_sweep:
                    self._sweep(now)
                pending = self._pending[trace_id] = _Pending(now)
            pending.spans.append(span)
            pending.has_error = pending.has_error or is_error
            self._pending_spans += 1
            if is_root:
                self._settle(trace_id)
            if self._pending_spans > self.pending_span_limit:
                self._settle_oldest()

    def _settle(self, trace_id: int) -> None:
        pending = self._pending.pop(trace_id)
        self._pending_spans -= len(pending.spans)
        if not pending.has_error:
            self.traces_dropped += 1
            return
        self._kept[trace_id] = kept = _Kept.of(pending.spans, self.bound)
        self._kept_spans += kept.spans
        self.spans_left_out += len(pending.spans) - kept.spans
        self.traces_kept += 1
        self._evict_over_budget()
        if trace_id in self._wanted:
            self._wanted.discard(trace_id)
            self._write_soon(trace_id, kept.packed)

    def name(self, owner: str, trace_ids: Sequence[str]) -> None:
        """``owner`` (an incident) names these kept traces (hex ids): they are written to the
        archive within a second. A later naming by the same owner replaces this one unless it
        was written meanwhile. Cheap: call it from the event loop."""
        if self.archive is None:
            return
        with self._lock:
            self._named[owner] = trace_ids
            if len(self._named) > 10_000:  # bounded even if nothing writes them
                self._named.pop(next(iter(self._named)))

    def archive_named(self) -> int:
        """Hand the named traces not written yet to the archive's writer; returns how many."""
        if self.archive is None:
            return 0
        with self._lock:
            named, self._named = self._named, {}
            written = 0
            for trace_id_hex in {t for ids in named.values() for t in ids}:
                try:
                    trace_id = int(trace_id_hex, 16)
                except ValueError:
                    continue
                if trace_id in self._archived:
                    continue
                kept = self._kept.get(trace_id)
                if kept is not None:
                    self._write_soon(trace_id, kept.packed)
                    written += 1
                elif trace_id in self._pending and len(self._wanted) < 10_000:
                    self._wanted.add(trace_id)
            return written

    async def run_archiving(self, every_s: float = 1.0) -> None:
        """Write what has been named, every ``every_s``, until cancelled."""
        while True:
            await asyncio.sleep(every_s)
            self.archive_named()

    def _write_soon(self, trace_id: int, packed: bytes) -> None:
        # Under the lock.
        assert self.archive is not None
        if not self.archive.offer(trace_id, packed):
            self._behind[trace_id] = None  # the writer is behind: written at the stop
            if len(self._behind) > self.archive.max_traces:
                self._behind.popitem(last=False)
            return
        self._behind.pop(trace_id, None)
        self._archived[trace_id] = None
        if len(self._archived) > self.archive.max_traces:
            self._archived.popitem(last=False)

    def keep_records(self, records: list[SpanRecord]) -> int:
        """Keep the traces among ``records`` (spans another service sent) that have an error,
        with all their spans here (written to the archive like the others: once named).
        Spans of a trace whose local root has not ended join its pending spans and share its
        fate. Returns how many traces were kept now."""
        by_trace: dict[int, list[SpanRecord]] = {}
        for record in records:
            by_trace.setdefault(int(record.trace_id, 16), []).append(record)
        kept_now = 0
        with self._lock:
            for trace_id, spans in by_trace.items():
                kept = self._kept.get(trace_id)
                pending = None if kept is not None else self._pending.get(trace_id)
                if pending is not None:
                    # Its local root is still running here: the trace is settled with it, so
                    # the spans that ended here already are kept together with these.
                    pending.spans.extend(spans)
                    pending.has_error = pending.has_error or any(s.is_error for s in spans)
                    self._pending_spans += len(spans)
                    continue
                if kept is None and not any(span.is_error for span in spans):
                    self.traces_dropped += 1
                    continue
                before: list[SpanRecord] = []
                if kept is None:
                    self.traces_kept += 1
                else:  # a sender's retry repeats spans already kept
                    before = unpack(kept.packed)
                    have = {span.span_id for span in before}
                    spans = [span for span in spans if span.span_id not in have]
                kept = self._join(trace_id, kept, [*before, *spans])
                kept_now += 1
                if self.archive is not None and trace_id in self._archived:
                    self._write_soon(trace_id, kept.packed)
            self._evict_over_budget()
        return kept_now

    def _join(self, trace_id: int, kept: _Kept | None, spans: list[KeptSpan]) -> _Kept:
        """Keep ``spans`` (those held before first) as the trace's, within ``bound``; under
        the lock."""
        self._kept[trace_id] = joined = _Kept.of(spans, self.bound)
        self._kept_spans += joined.spans - (kept.spans if kept is not None else 0)
        self.spans_left_out += len(spans) - joined.spans
        return joined

    def _settle_oldest(self) -> None:
        while self._pending_spans > self.pending_span_limit and self._pending:
            self._settle(next(iter(self._pending)))

    def _sweep(self, now: float) -> None:
        """Settle traces whose root never ended here (it lives in another process, or a
        request was abandoned); checked whenever a new trace starts."""
        self._next_sweep = now + self.linger_s / 2
        cutoff = now - self.linger_s
        while self._pending:
            trace_id, pending = next(iter(self._pending.items()))
            if pending.started > cutoff:
                break
            self._settle(trace_id)

    def _evict_over_budget(self) -> None:
        while self._kept_spans > self.span_budget and len(self._kept) > 1:
            _, kept = self._kept.popitem(last=False)
            self._kept_spans -= kept.spans
            self.traces_evicted += 1

    def get_trace(self, trace_id_hex: str) -> list[SpanRecord] | None:
        """Every span kept for the trace, by start time (``read_trace``'s spans)."""
        found = self.read_trace(trace_id_hex)
        return None if found is None else found[0]

    def read_trace(self, trace_id_hex: str) -> tuple[list[SpanRecord], str] | None:
        """Every span kept for the trace, by start time; also a trace still pending when it
        already has an error. None when the trace is not kept. A trace this process does not
        hold is read from the archive, which raises when it cannot be read (its database is
        down). One held here answers with the archive's other spans of it (kept before a
        restart, or by another replica), and without them, saying why (the second item, else
        ""), when the archive cannot be read or does not answer within a second: what is held
        here answers all the same, never held up by a frozen database."""
        try:
            trace_id = int(trace_id_hex, 16)
        except ValueError:
            return None
        spans: list[KeptSpan] | None = None
        with self._lock:
            kept = self._kept.get(trace_id)
            if kept is None:
                pending = self._pending.get(trace_id)
                if pending is not None and pending.has_error:
                    spans = list(pending.spans)
        unread = ""
        if kept is not None or spans is not None:
            records = unpack(kept.packed) if kept is not None else [as_record(s) for s in spans]
            if self._prompt_read is not None:
                stored, unread = self._prompt_read(format(trace_id, "032x"))
                have = {record.span_id for record in records}
                records += [record for record in stored or () if record.span_id not in have]
        elif self.archive is not None:  # kept before a restart, or evicted from memory
            stored = self.archive.get(format(trace_id, "032x"))
            if stored is None:
                return None
            records = stored
        else:
            return None
        records.sort(key=lambda record: record.start_ns)
        return records, unread

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "traces_kept_now": len(self._kept),
                "spans_kept_now": self._kept_spans,
                "traces_pending": len(self._pending),
                "spans_pending": self._pending_spans,
                "traces_kept": self.traces_kept,
                "traces_evicted": self.traces_evicted,
                "traces_dropped": self.traces_dropped,
                "spans_left_out": self.spans_left_out,
            }

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self) -> None:
        """Write the named traces not written yet, and the other kept traces into the room
        the archive has left (none pushes out a trace written before: in a fleet, another
        replica's incident's), then stop."""
        self.archive_named()
        with self._lock:
            self._pending.clear()
            self._pending_spans = 0
            unwritten = [
                (trace_id, kept.packed)
                for trace_id, kept in self._kept.items()
                if trace_id not in self._archived
            ]
        if self.archive is not None:
            named = [trace for trace in unwritten if trace[0] in self._behind]
            rest = [trace for trace in unwritten if trace[0] not in self._behind]
            bound = self.archive.max_traces
            self.archive.close(named=named[-bound:], fill=rest[-bound:])


def span_tree(records: list[SpanRecord]) -> list[dict[str, Any]]:
    """Nest spans under their parents; spans whose parent is missing become roots."""
    nodes: dict[str, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: r.start_ns):
        nodes[record.span_id] = {
            "name": record.name,
            "service": record.service_name,
            "kind": record.kind,
            "spanId": record.span_id,
            "parentSpanId": record.parent_span_id,
            "start": record.start_ns,
            "end": record.end_ns,
            "durationMs": round(record.duration_ms, 3),
            "status": {"code": record.status_code, "message": record.status_message},
            "attributes": record.attributes,
            # What rules may match besides the above: ``ers classify --explain`` reads a
            # span of this tree as the classifier saw it.
            "resource": record.resource,
            "events": [event.to_dict() for event in record.events],
            "children": [],
        }
    roots = []
    for node in nodes.values():
        parent = nodes.get(node["parentSpanId"]) if node["parentSpanId"] else None
        (parent["children"] if parent is not None else roots).append(node)
    return roots
