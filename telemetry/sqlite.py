"""How ERS opens a SQLite file, the same way everywhere: WAL (reads run beside a write),
``synchronous=NORMAL`` and a busy timeout, in autocommit mode. The trace archive opens its file
with it, and so do the stores (``service.stores.sql``)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

# How long a statement waits for another process's write to finish before it fails.
BUSY_TIMEOUT_MS = 5000


def connect_sqlite(path: Path) -> sqlite3.Connection:
    """A connection to the SQLite file at ``path`` (created with its folder when missing), in
    autocommit mode: a statement is its own transaction unless a BEGIN opens one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    enter_wal(db)
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def enter_wal(db: sqlite3.Connection, wait_s: float = BUSY_TIMEOUT_MS / 1000) -> None:
    """Switch to WAL, waiting up to ``wait_s`` for another process doing the same: on a new
    file, SQLite answers "database is locked" at once, without its busy handler, to all but one
    of the processes that switch at the same moment (replicas started together on one data
    directory)."""
    deadline = time.monotonic() + wait_s
    pause = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
