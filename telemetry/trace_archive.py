"""Kept traces in a SQLite file beside the incidents, so an incident's trace link still
answers after a restart.

Bounded: at most ``max_traces`` traces, the least recently kept deleted first. Writes never
run on the caller's thread unless it asks (``write``): ``offer`` hands a trace to a writer
thread through a bounded queue and drops it when the queue is full, so a span processor on
the event loop never waits for the disk. ``close`` writes what is queued, then stops.

The writer lingers briefly once woken (``linger_s``) and writes what came meanwhile in one
transaction with one trim to ``max_traces``: in an error storm every failing request keeps a
trace, and a transaction and a trim per trace cost more CPU than the request itself, taken
from the event loop's core (and its GIL) at the moment it is busiest.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan

from telemetry.span_record import SpanRecord
from telemetry.sqlite import connect_sqlite

log = logging.getLogger("ers.traces")

SCHEMA = """CREATE TABLE IF NOT EXISTS traces (
    trace_id TEXT PRIMARY KEY, kept_at REAL NOT NULL, spans TEXT NOT NULL)"""
KEPT_AT_INDEX = "CREATE INDEX IF NOT EXISTS traces_kept_at ON traces (kept_at)"
INSERT = "INSERT OR REPLACE INTO traces (trace_id, kept_at, spans) VALUES (?, ?, ?)"
TRIM = (
    "DELETE FROM traces WHERE trace_id IN (SELECT trace_id FROM traces "
    "ORDER BY kept_at DESC LIMIT -1 OFFSET ?)"
)
# Traces written per transaction at most, so one write never holds the file for long.
BATCH_LIMIT = 500

Span = ReadableSpan | SpanRecord
# Told the trace's document once it is written (see ``TraceArchive.offer``).
Written = Callable[[str], None]


def as_record(span: Span) -> SpanRecord:
    return span if isinstance(span, SpanRecord) else SpanRecord.from_readable_span(span)


def encode_trace(spans: Sequence[Span]) -> str:
    """A trace's spans as the archive stores them: a JSON list of ``SpanRecord.to_dict``."""
    return json.dumps([as_record(span).to_dict() for span in spans], default=str)


def decode_trace(document: str) -> list[SpanRecord]:
    return [SpanRecord.from_dict(item) for item in json.loads(document)]


class TraceArchive:
    def __init__(
        self,
        path: Path,
        *,
        max_traces: int = 2000,
        queue_size: int = 1000,
        linger_s: float = 0.1,
    ) -> None:
        if max_traces < 1:
            raise ValueError("max_traces must be at least 1")
        self.path = path
        self.max_traces = max_traces
        self.queue_size = queue_size
        self.traces_dropped = 0
        self._linger_s = linger_s
        self._db = connect_sqlite(path)
        self._db.execute(SCHEMA)
        self._db.execute(KEPT_AT_INDEX)
        self._lock = threading.Lock()
        self._queue: deque[tuple[int, list[Span], Written | None]] = deque()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._writer = threading.Thread(target=self._drain, name="trace-archive", daemon=True)
        self._writer.start()

    def offer(self, trace_id: int, spans: Sequence[Span], written: Written | None = None) -> None:
        """Write the trace soon, on the writer thread; dropped when the queue is full or the
        archive is closing. ``written`` is then called there with the stored document."""
        if len(self._queue) >= self.queue_size or self._closing.is_set():
            self.traces_dropped += 1
            return
        self._queue.append((trace_id, list(spans), written))
        if not self._wake.is_set():
            self._wake.set()

    def write(self, trace_id: int, spans: Sequence[Span]) -> str:
        """Write the trace now, on this thread (never the event loop's); returns the stored
        document."""
        written = self._store([(trace_id, spans, None)])
        if not written:
            raise ValueError(f"trace {trace_id:032x} could not be encoded")
        return written[0][1]

    def get(self, trace_id_hex: str) -> list[SpanRecord] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT spans FROM traces WHERE trace_id = ?", (trace_id_hex,)
            ).fetchone()
        if row is None:
            return None
        return decode_trace(row[0])

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        self._writer.join(timeout=30)
        with self._lock:
            self._db.close()

    def _store(
        self, traces: Sequence[tuple[int, Sequence[Span], Written | None]]
    ) -> list[tuple[Written | None, str]]:
        """One transaction: the traces, in order (a later one is the more recently kept),
        then one trim to ``max_traces``; returns each written trace's listener and document.

        Each trace is encoded right before its insert, not all of them first: the insert
        releases the GIL, so the event loop's thread never waits for a whole batch's
        encoding (milliseconds of Python) at once."""
        written: list[tuple[Written | None, str]] = []
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                for trace_id, spans, listener in traces:
                    try:
                        document = encode_trace(spans)
                    except Exception:  # one unwritable trace must not cost the others
                        log.exception("could not keep trace %032x on disk", trace_id)
                        continue
                    db.execute(INSERT, (format(trace_id, "032x"), time.time(), document))
                    written.append((listener, document))
                db.execute(TRIM, (self.max_traces,))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return written

    def _drain(self) -> None:
        queue = self._queue
        while True:
            self._wake.wait()
            if self._linger_s > 0 and not self._closing.is_set():
                self._closing.wait(self._linger_s)  # close cuts the lingering short
            self._wake.clear()
            while queue:
                batch = [queue.popleft() for _ in range(min(len(queue), BATCH_LIMIT))]
                self._write_offered(batch)
            if self._closing.is_set() and not queue:
                return

    def _write_offered(self, batch: list[tuple[int, list[Span], Written | None]]) -> None:
        try:
            written = self._store(batch)
        except Exception:  # a failing disk must not stop the writer
            log.exception("could not keep %d traces on disk", len(batch))
            return
        for listener, document in written:
            if listener is not None:
                try:
                    listener(document)
                except Exception:
                    log.exception("a kept trace's listener failed")
