"""What a store written once needs from its database, on SQLite and on PostgreSQL.

A store writes its SQL once, with ``?`` placeholders and unqualified table names, and asks
its ``Database`` for the little that differs (the ``Dialect``): PostgreSQL's connections
translate ``?`` to ``%s`` and search the store's schema (``pg_pool``). Both engines take
``INSERT … ON CONFLICT … RETURNING`` as it is.

The SQLite side is here: ``connect_sqlite`` is the one way the service opens its SQLite
files (one set of pragmas), and ``SqliteDatabase`` gives each thread its own connection
(WAL lets reads run beside a write) while one lock serialises the writes, so a worker
thread's batches and the API's changes never interleave and never meet "database is locked".
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

# How long a statement waits for another process's write to finish before it fails.
BUSY_TIMEOUT_MS = 5000


class Rows(Protocol):
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Statements(Protocol):
    """A connection or cursor: rows are read by column name."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Rows: ...
    def executemany(self, sql: str, params: Any, /) -> Any: ...


@dataclass(frozen=True)
class Dialect:
    """``lock_rows`` ends a SELECT whose rows stay locked until the transaction commits
    (SQLite needs none: its write transaction holds the whole file); ``no_limit`` is the
    LIMIT that means all rows; ``byte_order`` makes text sort byte by byte."""

    name: str
    lock_rows: str
    no_limit: int | None
    byte_order: str
    arrays: bool

    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column`` is one of ``values``: the clause and its parameters."""
        if self.arrays:
            return f"{column} = ANY(?)", [list(values)]
        return f"{column} IN ({','.join('?' * len(values))})", list(values)


SQLITE = Dialect("sqlite", lock_rows="", no_limit=-1, byte_order="", arrays=False)
POSTGRESQL = Dialect(
    "postgresql",
    lock_rows=" FOR NO KEY UPDATE",
    no_limit=None,
    byte_order=' COLLATE "C"',
    arrays=True,
)


class Database(Protocol):
    """``rows`` runs one statement that commits on its own (a read, or a write that needs no
    other statement), ``transaction`` statements that commit together."""

    dialect: Dialect

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...
    def transaction(self) -> AbstractContextManager[Statements]: ...
    def close(self) -> None: ...


def connect_sqlite(path: Path) -> sqlite3.Connection:
    """A connection to the SQLite file at ``path`` (created with its folder when missing), in
    autocommit mode: a statement is its own transaction unless a BEGIN opens one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return db


class SqliteDatabase:
    dialect = SQLITE

    def __init__(self, path: Path, schema: str = "") -> None:
        """Opens ``path`` and runs ``schema`` (idempotent DDL) on it."""
        self.path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        if schema:
            self.connection().executescript(schema)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection."""
        db = getattr(self._local, "db", None)
        if db is None:
            if self._closed:
                raise sqlite3.ProgrammingError(f"{self.path} has been closed")
            db = connect_sqlite(self.path)
            self._local.db = db
            with self._connections_lock:
                self._connections.append(db)
        return db

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self.connection().execute(sql, params).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        db = self.connection()
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
            self._closed = True
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()
