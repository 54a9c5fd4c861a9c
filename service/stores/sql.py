"""What a store written once needs from its database, on SQLite and on PostgreSQL.

A store writes its SQL once, with ``?`` placeholders and unqualified table names, and asks
its ``Database`` for the little that differs (the ``Dialect``): PostgreSQL's connections
translate ``?`` to ``%s`` and search the store's schema (``pg_pool``). Both engines take
``INSERT … ON CONFLICT … RETURNING`` as it is.

The SQLite side is here: ``SqliteDatabase`` opens its file with ``telemetry.sqlite`` (the one
set of pragmas every SQLite file of ERS gets), gives each thread its own connection
(WAL lets reads run beside a write) while one lock serialises the writes, so a worker
thread's batches and the API's changes never interleave and never meet "database is locked".
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from psycopg.types.json import Jsonb

from telemetry.sqlite import connect_sqlite


class Rows(Protocol):
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Statements(Protocol):
    """A connection or cursor: rows are read by column name."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Rows: ...
    def executemany(self, sql: str, params: Any, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the engines, in SQL and in values. ``lock_rows`` ends a SELECT
    whose rows stay locked until the transaction commits (SQLite needs none: its write
    transaction holds the whole file); ``no_limit`` is the LIMIT that means all rows;
    ``byte_order`` makes text sort byte by byte ("Food" < "books" on both); lists and JSON
    values are stored as JSON text on SQLite, as ``TEXT[]`` and ``JSONB`` on PostgreSQL."""

    name: str
    lock_rows: str
    no_limit: int | None
    byte_order: str
    arrays: bool
    encode_list: Callable[[tuple[str, ...]], Any]
    decode_list: Callable[[Any], tuple[str, ...]]
    encode_json: Callable[[Any], Any]
    decode_json: Callable[[Any], Any]

    def sql(self, text: str) -> str:
        """``text``, written with ``?`` marks, as this engine's driver takes it."""
        return _percent_marks(text) if self.arrays else text

    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column`` is one of ``values``: the clause and its parameters."""
        if self.arrays:
            return f"{column} = ANY(?)", [list(values)]
        return f"{column} IN ({','.join('?' * len(values))})", list(values)


@functools.lru_cache(maxsize=512)
def _percent_marks(text: str) -> str:
    return text.replace("%", "%%").replace("?", "%s")


SQLITE = Dialect(
    "sqlite",
    lock_rows="",
    no_limit=-1,
    byte_order="",  # SQLite compares text with BINARY unless told otherwise
    arrays=False,
    encode_list=lambda items: json.dumps(list(items)),
    decode_list=lambda stored: tuple(json.loads(stored)),
    encode_json=json.dumps,
    decode_json=json.loads,
)
POSTGRESQL = Dialect(
    "postgresql",
    lock_rows=" FOR NO KEY UPDATE",
    no_limit=None,
    byte_order=' COLLATE "C"',
    arrays=True,
    encode_list=list,  # a TEXT[] column
    decode_list=tuple,
    encode_json=Jsonb,  # a JSONB column: psycopg decodes it on the way back
    decode_json=lambda stored: stored,
)


class Database(Protocol):
    """``rows`` runs one statement that commits on its own (a read, or a write that needs no
    other statement), ``transaction`` statements that commit together."""

    dialect: Dialect

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...
    def transaction(self) -> AbstractContextManager[Statements]: ...
    def close(self) -> None: ...


def create_table_on_sqlite(database: Database, ddl: str) -> None:
    """Run ``ddl`` (``CREATE TABLE IF NOT EXISTS …``) when ``database`` is SQLite; on
    PostgreSQL a table is made by its component's migrations, never at open."""
    if database.dialect is SQLITE:
        database.rows(ddl)


FILE_FAILURES = (sqlite3.OperationalError, sqlite3.DatabaseError)
# close() waits this long for the statements other threads are running.
CLOSE_WAIT_S = 10.0


class SqliteDatabase:
    dialect = SQLITE

    def __init__(
        self,
        path: Path,
        schema: str = "",
        unavailable: Callable[[str], Exception] | None = None,
    ) -> None:
        """Opens ``path`` and runs ``schema`` (idempotent DDL) on it. With ``unavailable``,
        a file that cannot be read or written (a disk I/O error, a read-only or full disk,
        a file that is no database) raises what it makes of the reason, as ``PgPool`` does
        for a server that cannot be used."""
        self.path = path
        self._unavailable = unavailable
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        # Statements running, on any thread: close() waits for them, as closing a connection
        # under a statement of another thread crashes the process (a health probe in its
        # thread at shutdown did).
        self._running = 0
        self._idle = threading.Condition(self._connections_lock)
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
        with self._file_failures(), self._in_use():
            return self.connection().execute(sql, params).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._file_failures(), self._in_use():
            db = self.connection()
            with self._write_lock:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    # A failed COMMIT (the disk refused the log) may leave the transaction
                    # open: this thread's next BEGIN would fail on it.
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise

    @contextmanager
    def _in_use(self) -> Iterator[None]:
        with self._idle:
            if self._closed:
                raise sqlite3.ProgrammingError(f"{self.path} has been closed")
            self._running += 1
        try:
            yield
        finally:
            with self._idle:
                self._running -= 1
                if not self._running:
                    self._idle.notify_all()

    @contextmanager
    def _file_failures(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            # The file's failures, not a statement's mistakes (a broken constraint, a
            # closed connection): those stay what they are.
            if type(exc) not in FILE_FAILURES:
                raise
            # A connection opened while the file could not be written is read-only for
            # good (SQLite falls back to it): the next call opens a fresh one, which can
            # write again once the file can.
            self._forget_connection()
            if self._unavailable is None:
                raise
            raise self._unavailable(f"{self.path}: {exc}") from None

    def _forget_connection(self) -> None:
        db = getattr(self._local, "db", None)
        if db is None:
            return
        self._local.db = None
        with self._connections_lock:
            if db in self._connections:
                self._connections.remove(db)
        db.close()

    def close(self) -> None:
        with self._idle:
            self._closed = True
            self._idle.wait_for(lambda: not self._running, timeout=CLOSE_WAIT_S)
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()
