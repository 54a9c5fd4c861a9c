"""Where the archive of kept traces lives: beside the incidents, in a SQLite file of the data
directory, or, when the incidents are in PostgreSQL, in a table of the ``ers_kept_traces``
schema that every replica writes and reads, so that an incident's trace link answers on
whichever replica it reaches, and after any of them restarts.

The table is bounded for the fleet as a whole (the archive's ``max_traces``): each write takes
a transaction-level advisory lock, counts the rows and trims the oldest, so two replicas
writing at once never leave more than the bound. It is not backed up, as the file is not.

The statements run on the archive's writer thread and on the threads the traces endpoint
reads from, never on the event loop. A server that cannot be reached raises
``KeptTracesUnavailable``, both a ``StoreUnavailable`` (the endpoint answers 503 naming the
store) and the archive's ``ArchiveUnavailable`` (its writer tries again later). A file SQLite
finds damaged at start is moved aside and a new one started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from backup.staging import not_a_database
from service.errors import StatementRefused, StoreUnavailable
from service.settings import Settings
from service.stores.pg_pool import PgPool
from service.stores.postgres import PostgresDatabase
from service.stores.postgres_migrations import Migration
from service.stores.sql import POSTGRESQL
from telemetry.trace_archive import ArchiveUnavailable, Row, TraceArchive, into_room
from telemetry.trace_merge import TraceBound, merged_with_stored

COMPONENT = "kept_traces"
SCHEMA = "ers_kept_traces"
log = logging.getLogger("ers.traces")
# Append-only, like every schema's migrations: never edit one that has shipped.
MIGRATIONS: tuple[Migration, ...] = (
    (
        f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
        f"""CREATE TABLE {SCHEMA}.traces (
            trace_id TEXT PRIMARY KEY,
            kept_at DOUBLE PRECISION NOT NULL,
            spans TEXT NOT NULL
        )""",
        f"CREATE INDEX traces_kept_at ON {SCHEMA}.traces (kept_at)",
    ),
)
# pg_advisory_xact_lock key the replicas' writes take turns on: the bytes of "ERS_KEPT".
WRITE_LOCK_KEY = 0x4552_535F_4B45_5054
FILE_NAME = "kept-traces.sqlite3"


class KeptTracesUnavailable(StoreUnavailable, ArchiveUnavailable):
    """The kept traces' database server cannot be reached now."""

    def __init__(self, reason: str) -> None:
        super().__init__(COMPONENT, reason)


class KeptTraceRefused(StatementRefused):
    """The server refused to store a trace (and rolled it back): that trace is not kept."""

    def __init__(self, reason: str) -> None:
        super().__init__(COMPONENT, reason)


class PgTraceTable:
    """The archive's table on PostgreSQL (``telemetry.trace_archive.TraceTable``)."""

    place = "in PostgreSQL"

    def __init__(self, url: str) -> None:
        """Connects to a migrated database; raises KeptTracesUnavailable when the server
        can't be used or the schema is missing."""
        self._pool = PgPool(
            url,
            name="ers-kept-traces",
            unavailable=KeptTracesUnavailable,
            refused=KeptTraceRefused,
            schema=SCHEMA,
            tables=("traces",),
            component=COMPONENT,
        )

    def put(
        self,
        rows: Sequence[Row],
        max_traces: int,
        trim_to: int,
        *,
        fill_only: bool = False,
        bound: TraceBound = TraceBound(),
    ) -> None:
        with self._pool.transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK_KEY,))
            if fill_only:
                held = db.execute("SELECT count(*) AS n, min(kept_at) AS oldest FROM traces")
                row = held.fetchone()
                fitting = into_room(rows, max_traces, int(row["n"]), row["oldest"])
                if fitting:
                    db.executemany(
                        "INSERT INTO traces (trace_id, kept_at, spans) VALUES (?, ?, ?) "
                        "ON CONFLICT (trace_id) DO NOTHING",
                        fitting,
                    )
                return
            db.executemany(
                "INSERT INTO traces (trace_id, kept_at, spans) VALUES (?, ?, ?) "
                "ON CONFLICT (trace_id) DO UPDATE "
                "SET kept_at = EXCLUDED.kept_at, spans = EXCLUDED.spans",
                # The advisory lock above already orders the fleet's writes (a trace new to
                # the table has no row to lock); the row lock holds off any other writer.
                merged_with_stored(db, rows, bound, lock_rows=POSTGRESQL.lock_rows),
            )
            db.execute(
                "DELETE FROM traces WHERE (SELECT count(*) FROM traces) > ? AND trace_id IN "
                "(SELECT trace_id FROM traces ORDER BY kept_at DESC OFFSET ?)",
                (max_traces, trim_to),
            )

    def spans(self, trace_id_hex: str) -> str | None:
        rows = self._pool.rows("SELECT spans FROM traces WHERE trace_id = ?", (trace_id_hex,))
        return str(rows[0]["spans"]) if rows else None

    def close(self) -> None:
        self._pool.close()


async def open_trace_archive(settings: Settings, database: PostgresDatabase | None) -> TraceArchive:
    """The archive of kept traces: the fleet's table when the stores are on PostgreSQL
    (``database``; its schema migrated first), else the file in the data directory."""
    if database is None or settings.database_url is None:
        path = settings.data_dir / FILE_NAME
        try:
            return await asyncio.to_thread(TraceArchive, path)
        except sqlite3.DatabaseError as exc:
            if not not_a_database(exc):
                raise
            # Traces kept for diagnosis, never backed up: not worth a refused start.
            moved = await asyncio.to_thread(_move_aside, path)
            log.error("cannot open %s (%s): moved to %s, a new archive started", path, exc, moved)
        return await asyncio.to_thread(TraceArchive, path)
    await database.migrate({COMPONENT: MIGRATIONS})
    table = await asyncio.to_thread(PgTraceTable, settings.database_url.get_secret_value())
    return TraceArchive(table)


def _move_aside(path: Path) -> Path:
    """Move a damaged archive away with its log files (a new file must not take up an old
    log): ``kept-traces.sqlite3.damaged-<UTC time>``, kept for whoever wants to look."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for suffix in ("-wal", "-shm", ""):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").rename(f"{path}.damaged-{stamp}{suffix}")
    return Path(f"{path}.damaged-{stamp}")
