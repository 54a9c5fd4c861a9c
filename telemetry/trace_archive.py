"""Kept traces in a SQLite file beside the incidents, so an incident's trace link still
answers after a restart.

Bounded: at most ``max_traces`` traces, the least recently kept deleted first. Once full,
the oldest tenth goes at once, so a full file holds between nine tenths of ``max_traces`` and
all of it, and the trim (a walk over the kept_at index) runs once per that many writes rather
than after each: in an error storm every failing chat keeps a trace, and every statement of
the writer thread is one more time it takes the GIL back from the event loop.

Writes never run on the caller's thread unless it asks (``write``): ``offer`` hands a trace to
a writer thread through a bounded queue and drops it when the queue is full, so a span
processor on the event loop never waits for the disk. The writer writes what has queued in
one transaction (up to ``WRITE_BATCH`` traces). ``close`` writes what is queued, then stops.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from telemetry.span_record import SpanRecord
from telemetry.sqlite import connect_sqlite
from telemetry.trace_packing import unpack

log = logging.getLogger("ers.traces")

SCHEMA = """CREATE TABLE IF NOT EXISTS traces (
    trace_id TEXT PRIMARY KEY, kept_at REAL NOT NULL, spans TEXT NOT NULL)"""
KEPT_AT_INDEX = "CREATE INDEX IF NOT EXISTS traces_kept_at ON traces (kept_at)"

_STOP = object()
WRITE_BATCH = 64  # traces written in one transaction at most


class TraceArchive:
    def __init__(self, path: Path, *, max_traces: int = 2000, queue_size: int = 1000) -> None:
        if max_traces < 1:
            raise ValueError("max_traces must be at least 1")
        self.path = path
        self.max_traces = max_traces
        self._db = connect_sqlite(path)
        self._db.execute(SCHEMA)
        self._db.execute(KEPT_AT_INDEX)
        # The rows a trim leaves: nine tenths of the bound (all of it for a bound under ten).
        self._trim_to = max_traces - max_traces // 10
        # At least the rows the file holds: a rewrite of a kept trace counts as one more.
        self._rows_at_most = self._db.execute("SELECT count(*) FROM traces").fetchone()[0]
        self._lock = threading.Lock()
        self._queue: queue.Queue[object] = queue.Queue(queue_size)
        self._writer = threading.Thread(target=self._drain, name="trace-archive", daemon=True)
        self._writer.start()

    def offer(self, trace_id: int, packed: bytes) -> bool:
        """Write the trace (``pack``ed) soon, on the writer thread; dropped (False) when the
        queue is full."""
        try:
            self._queue.put_nowait((trace_id, packed))
        except queue.Full:
            return False
        return True

    def write(self, trace_id: int, packed: bytes) -> None:
        """Write the trace (``pack``ed) now, on this thread (never the event loop's)."""
        self.write_many([(trace_id, packed)])

    def write_many(self, traces: Sequence[tuple[int, bytes]]) -> None:
        """Write the traces (``pack``ed) now, on this thread, in one transaction."""
        now = time.time()
        rows = [
            # In order: the trim keeps the newest by kept_at.
            (
                format(trace_id, "032x"),
                now + index * 1e-6,
                json.dumps([record.to_dict() for record in unpack(packed)], default=str),
            )
            for index, (trace_id, packed) in enumerate(traces)
        ]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO traces (trace_id, kept_at, spans) VALUES (?, ?, ?)",
                    rows,
                )
                self._rows_at_most += len(rows)
                if self._rows_at_most > self.max_traces:
                    self._db.execute(
                        "DELETE FROM traces WHERE trace_id IN (SELECT trace_id FROM traces "
                        "ORDER BY kept_at DESC LIMIT -1 OFFSET ?)",
                        (self._trim_to,),
                    )
                    self._rows_at_most = self._trim_to
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def get(self, trace_id_hex: str) -> list[SpanRecord] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT spans FROM traces WHERE trace_id = ?", (trace_id_hex,)
            ).fetchone()
        if row is None:
            return None
        return [SpanRecord.from_dict(item) for item in json.loads(row[0])]

    def close(self) -> None:
        self._queue.put(_STOP)
        self._writer.join(timeout=30)
        with self._lock:
            self._db.close()

    def _drain(self) -> None:
        while True:
            batch = [self._queue.get()]
            # What queued meanwhile goes in the same transaction: in an error storm every
            # failing chat keeps a trace, and each commit is more statements that take the
            # GIL back from the event loop.
            while len(batch) < WRITE_BATCH and batch[-1] is not _STOP:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is _STOP
            traces = [item for item in batch if item is not _STOP]
            if traces:
                try:
                    self.write_many(traces)  # type: ignore[arg-type]
                except Exception:  # then one by one: an unwritable trace loses only itself
                    for trace_id, packed in traces:  # type: ignore[misc]
                        try:
                            self.write(trace_id, packed)
                        except Exception:  # and must not stop the writer
                            log.exception("could not keep trace %032x on disk", trace_id)
            if stop:
                return
