"""The archive of kept traces: a bounded table that outlives the process, so an incident's
trace link still answers after a restart. The table is a seam (``TraceTable``): a SQLite file
beside the incidents (``SqliteTraceTable``, here), or, for a fleet on PostgreSQL, one table
every replica writes and reads (the service's ``service.incidents.trace_archive_pg``), so
the link answers on every replica.

Bounded: at most ``max_traces`` traces, the least recently kept deleted first. Once full,
the oldest tenth goes at once, so a full table holds between nine tenths of ``max_traces`` and
all of it. In the file the trim (a walk over the kept_at index) runs once per that many writes
rather than after each: in an error storm every failing chat keeps a trace, and every
statement of the writer thread is one more time it takes the GIL back from the event loop.

Writes never run on the caller's thread unless it asks (``write``): ``offer`` hands a trace to
a writer thread through a bounded queue and drops it when the queue is full, so a span
processor on the event loop never waits for the disk or the database. The writer writes what
has queued in one transaction (up to ``WRITE_BATCH`` traces). While the table cannot be
reached (``ArchiveUnavailable``: the database server is down) the writer holds what it was
given, the newest ``max_traces``, and tries again after 1, 2, 4 ... up to ``RETRY_MAX_S``
seconds; a trace the table refuses loses only itself. ``close`` writes what is queued and held,
then stops, and says in the log what it could not write.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from telemetry.span_record import SpanRecord
from telemetry.sqlite import connect_sqlite
from telemetry.trace_merge import TraceBound, encoded, merged_with_stored
from telemetry.trace_packing import unpack

log = logging.getLogger("ers.traces")

SCHEMA = """CREATE TABLE IF NOT EXISTS traces (
    trace_id TEXT PRIMARY KEY, kept_at REAL NOT NULL, spans TEXT NOT NULL)"""
KEPT_AT_INDEX = "CREATE INDEX IF NOT EXISTS traces_kept_at ON traces (kept_at)"

_STOP = object()
WRITE_BATCH = 64  # traces written in one transaction at most
RETRY_MAX_S = 30.0  # the longest pause between attempts while the table cannot be reached


class ArchiveUnavailable(Exception):
    """The table cannot be reached now (its database server is down or unreachable): what
    was to be written is written again later."""


# A trace as the table holds it: hex id, when it was kept (seconds since the epoch), and
# its spans as JSON.
Row = tuple[str, float, str]


def into_room(rows: Sequence[Row], max_traces: int, held: int, oldest: float | None) -> list[Row]:
    """The last of ``rows`` that fit beside the ``held`` rows of a table bound to
    ``max_traces``, in their order, kept_at just under ``oldest`` (the oldest row the table
    holds): the traces a stop writes into the room left are the first the next trim deletes,
    before any trace an incident named, however long ago that one was written."""
    room = max(0, max_traces - held)
    fitting = list(rows[len(rows) - room :]) if room else []
    if oldest is None:
        return fitting
    count = len(fitting)
    return [
        (trace_id, oldest - (count - index) * 1e-6, spans)
        for index, (trace_id, _, spans) in enumerate(fitting)
    ]


class TraceTable(Protocol):
    """Where the archive keeps its traces. Both methods are called off the event loop, from
    any thread; they raise ``ArchiveUnavailable`` when the table cannot be reached."""

    place: str  # where the traces go, for the log: "on disk", "in PostgreSQL"

    def put(
        self,
        rows: Sequence[Row],
        max_traces: int,
        trim_to: int,
        *,
        fill_only: bool = False,
        bound: TraceBound = TraceBound(),
    ) -> None:
        """Insert ``rows`` in one transaction, each row's spans merged with those the table
        holds of its trace, read in that transaction under the row's lock and kept within
        ``bound`` (``trace_merge.merged_with_stored``); when the table then holds more than
        ``max_traces``, keep its newest ``trim_to`` by kept_at. ``fill_only``: insert only
        the last of ``rows`` that fit under ``max_traces`` beside what the table holds, and
        none that is there already, older than every row it holds (``into_room``), so that they
        push nothing out, now or at a later trim."""

    def spans(self, trace_id_hex: str) -> str | None:
        """The spans (JSON) kept for the trace, or None."""

    def close(self) -> None: ...


class SqliteTraceTable:
    """The traces in a SQLite file of this process's own (the data directory's lock keeps
    other processes off it), so a count of the rows it may hold stands in for a count of
    the table at each write."""

    place = "on disk"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = connect_sqlite(path)
        self._db.execute(SCHEMA)
        self._db.execute(KEPT_AT_INDEX)
        # At least the rows the file holds: a rewrite of a kept trace counts as one more.
        self._rows_at_most = self._db.execute("SELECT count(*) FROM traces").fetchone()[0]
        self._lock = threading.Lock()

    def put(
        self,
        rows: Sequence[Row],
        max_traces: int,
        trim_to: int,
        *,
        fill_only: bool = False,
        bound: TraceBound = TraceBound(),
    ) -> None:
        with self._lock:
            # IMMEDIATE: the file is locked before the trace's stored spans are read, so a
            # writer of another connection cannot write between that read and this write.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if fill_only:
                    held, oldest = self._db.execute(
                        "SELECT count(*), min(kept_at) FROM traces"
                    ).fetchone()
                    fitting = into_room(rows, max_traces, held, oldest)
                    self._db.executemany(
                        "INSERT OR IGNORE INTO traces (trace_id, kept_at, spans) VALUES (?, ?, ?)",
                        fitting,
                    )
                    self._rows_at_most = held + len(fitting)
                    self._db.execute("COMMIT")
                    return
                self._db.executemany(
                    "INSERT OR REPLACE INTO traces (trace_id, kept_at, spans) VALUES (?, ?, ?)",
                    merged_with_stored(self._db, rows, bound, lock_rows=""),
                )
                self._rows_at_most += len(rows)
                if self._rows_at_most > max_traces:
                    self._db.execute(
                        "DELETE FROM traces WHERE trace_id IN (SELECT trace_id FROM traces "
                        "ORDER BY kept_at DESC LIMIT -1 OFFSET ?)",
                        (trim_to,),
                    )
                    self._rows_at_most = trim_to
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def spans(self, trace_id_hex: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT spans FROM traces WHERE trace_id = ?", (trace_id_hex,)
            ).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class TraceArchive:
    def __init__(
        self,
        table: TraceTable | Path,
        *,
        max_traces: int = 2000,
        queue_size: int = 1000,
        bound: TraceBound = TraceBound(),
    ) -> None:
        """``table``: where the traces go; a path is a SQLite file (``SqliteTraceTable``).
        ``bound``: the most one trace's row holds, however many writes add to it."""
        if max_traces < 1:
            raise ValueError("max_traces must be at least 1")
        self.table = SqliteTraceTable(table) if isinstance(table, Path) else table
        self.max_traces = max_traces
        self.bound = bound
        # The rows a trim leaves: nine tenths of the bound (all of it for a bound under ten).
        self._trim_to = max_traces - max_traces // 10
        self._queue: queue.Queue[object] = queue.Queue(queue_size)
        # What the writer was given and could not write yet, oldest first.
        self._held: OrderedDict[int, bytes] = OrderedDict()
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

    def write_many(self, traces: Sequence[tuple[int, bytes]], *, fill_only: bool = False) -> None:
        """Write the traces (``pack``ed) now, on this thread, in one transaction.
        ``fill_only``: only the newest that fit in the room the table has left, pushing out
        no trace it holds."""
        now = time.time()
        rows = [
            # In order: the trim keeps the newest by kept_at.
            (
                format(trace_id, "032x"),
                now + index * 1e-6,
                encoded([record.to_dict() for record in unpack(packed)], self.bound),
            )
            for index, (trace_id, packed) in enumerate(traces)
        ]
        # The table adds the spans it holds of each trace (written before a restart, or by
        # another replica), in the same transaction, under the row's lock.
        self.table.put(rows, self.max_traces, self._trim_to, fill_only=fill_only, bound=self.bound)

    def get(self, trace_id_hex: str) -> list[SpanRecord] | None:
        """The trace's spans, or None; raises what the table raises when it cannot be read
        (``ArchiveUnavailable``)."""
        spans = self.table.spans(trace_id_hex)
        if spans is None:
            return None
        return [SpanRecord.from_dict(item) for item in json.loads(spans)]

    def close(
        self,
        *,
        named: Sequence[tuple[int, bytes]] = (),
        fill: Sequence[tuple[int, bytes]] = (),
    ) -> None:
        """Write what is queued and held, then the traces ``named`` (as any write: the
        oldest held go if need be), then ``fill`` into the room the table has left
        (``write_many(fill_only=True)``), and stop."""
        self._queue.put(_STOP)
        self._writer.join(timeout=30)
        for traces, fill_only in ((named, False), (fill, True)):
            if not traces:
                continue
            try:
                self.write_many(traces, fill_only=fill_only)
            except ArchiveUnavailable as exc:  # an outage, told in its words: no trace
                log.error("could not write %d kept traces on closing: %s", len(traces), exc)
            except Exception:  # the file is full or gone: what was written stays
                log.exception("could not write %d kept traces on closing", len(traces))
        self.table.close()

    def _drain(self) -> None:
        pause, retry_at = 1.0, 0.0
        while True:
            wait = max(0.0, retry_at - time.monotonic()) if self._held else None
            try:
                batch = [self._queue.get(timeout=wait)]
            except queue.Empty:
                batch = []
            # What queued meanwhile goes in the same transaction: in an error storm every
            # failing chat keeps a trace, and each commit is more statements that take the
            # GIL back from the event loop.
            while len(batch) < WRITE_BATCH and (not batch or batch[-1] is not _STOP):
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = bool(batch) and batch[-1] is _STOP
            self._hold(batch)
            unreachable = None
            if self._held and (stop or time.monotonic() >= retry_at):
                unreachable = self._write_held()
                if unreachable is None:
                    pause = 1.0
                else:  # again later, less often
                    log.warning(
                        "%d kept traces wait to be written %s, tried again in %g s: %s",
                        len(self._held),
                        self.table.place,
                        pause,
                        unreachable,
                    )
                    retry_at, pause = time.monotonic() + pause, min(pause * 2, RETRY_MAX_S)
            if stop:
                if unreachable is not None:
                    log.error(
                        "%d kept traces were not written %s before stopping (%s); only "
                        "the replica that kept them can show them, until it evicts them",
                        len(self._held),
                        self.table.place,
                        unreachable,
                    )
                return

    def _hold(self, batch: list[object]) -> None:
        for item in batch:
            if item is _STOP:
                continue
            trace_id, packed = item  # type: ignore[misc]
            self._held.pop(trace_id, None)  # a late span's rewrite: the newest counts
            self._held[trace_id] = packed
        while len(self._held) > self.max_traces:  # older than the table would keep anyway
            self._held.popitem(last=False)

    def _write_held(self) -> ArchiveUnavailable | None:
        """Write what is held, a batch at a time; what the table raised when it could not
        be reached (the rest stays held), else None."""
        while self._held:
            traces = list(self._held.items())[:WRITE_BATCH]
            try:
                self._write_batch(traces)
            except ArchiveUnavailable as exc:
                return exc
        return None

    def _write_batch(self, traces: list[tuple[int, bytes]]) -> None:
        try:
            self.write_many(traces)
        except ArchiveUnavailable:
            raise
        except Exception:  # then one by one: an unwritable trace loses only itself
            for trace_id, packed in traces:
                try:
                    self.write(trace_id, packed)
                except ArchiveUnavailable:
                    raise
                except Exception:  # and must not stop the writer
                    log.exception("could not keep trace %032x %s", trace_id, self.table.place)
                del self._held[trace_id]
            return
        for trace_id, _ in traces:
            del self._held[trace_id]
