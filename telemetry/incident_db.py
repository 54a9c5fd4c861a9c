"""The incidents database file: its schema and one connection per thread.

Each thread reads through its own connection (WAL lets reads run beside a write); writes are
serialised by one lock, so the worker thread's batches and the API's status changes never
interleave and never meet "database is locked".
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL UNIQUE, status TEXT NOT NULL,
    severity TEXT NOT NULL, type TEXT NOT NULL, impact TEXT NOT NULL,
    recoverable INTEGER NOT NULL, protocol TEXT, rule TEXT NOT NULL, component TEXT NOT NULL,
    source_service TEXT NOT NULL, span_name TEXT NOT NULL, exception_type TEXT NOT NULL,
    message TEXT NOT NULL, count INTEGER NOT NULL, reopen_count INTEGER NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, opened_at REAL NOT NULL,
    acknowledged_at REAL, mitigated_at REAL, resolved_at REAL, recovery_time_s REAL,
    trace_ids TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_status ON incidents (status, severity);
CREATE INDEX IF NOT EXISTS incidents_last_seen ON incidents (last_seen);
CREATE TABLE IF NOT EXISTS timeline (
    seq INTEGER PRIMARY KEY, incident_id TEXT NOT NULL, at REAL NOT NULL, kind TEXT NOT NULL,
    actor TEXT NOT NULL, message TEXT NOT NULL, data TEXT
);
CREATE INDEX IF NOT EXISTS timeline_incident ON timeline (incident_id, seq);
CREATE TABLE IF NOT EXISTS span_records (
    seq INTEGER PRIMARY KEY, at REAL NOT NULL, incident_id TEXT NOT NULL,
    classification TEXT NOT NULL, record TEXT NOT NULL, weight INTEGER NOT NULL
);
"""


class IncidentDatabase:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.reader().executescript(SCHEMA)

    def reader(self) -> sqlite3.Connection:
        """This thread's connection."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            self._local.db = db
            with self._connections_lock:
                self._connections.append(db)
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        db = self.reader()
        with self._write_lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        with self._connections_lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()


def insert_timeline(
    db: sqlite3.Connection,
    incident_id: str,
    at: float,
    kind: str,
    actor: str,
    message: str,
    data: dict[str, Any] | None = None,
) -> int:
    cursor = db.execute(
        "INSERT INTO timeline (incident_id, at, kind, actor, message, data) VALUES (?,?,?,?,?,?)",
        (incident_id, at, kind, actor, message, json.dumps(data or {}, default=str)),
    )
    return int(cursor.lastrowid or 0)
