"""A component's SQLite file: the connection its concept's store runs on.

One connection per file, used from the event loop; statements are short, so they run
inline rather than paying a thread hop each. While another connection (an operator's
``sqlite3`` shell, a tool) holds the file's write lock, a statement does not wait inside
SQLite, which would stop the whole loop: it fails at once, and the work is tried again
after short sleeps on the loop (``outwaiting_writers``) for up to ``BUSY_TIMEOUT_MS``.
WAL with ``synchronous=NORMAL`` keeps every committed transaction across a killed
process; the log is copied into the database file by a thread of its own
(``wal_checkpoint``), never inside a commit on the loop. ``pause()`` closes the
connections so a rollback can swap the file underneath, and makes writers fail fast with
StoreUnavailable instead of writing into a file that is about to be replaced; ``resume()``
opens whatever file is then at the path.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from backup.staging import not_a_database
from service.errors import StoreDamaged, StorePaused, StoreUnavailable, note_cut_waiting
from service.stores.sql import SQLITE
from service.stores.unit_of_work import DEFAULT_POLICY, Applied, KeyPolicy, Unit, apply
from service.stores.wal_checkpoint import CHECKPOINTER
from telemetry.sqlite import enter_wal

# How long a write waits, in all, for another connection's write lock before it fails.
BUSY_TIMEOUT_MS = 2000
T = TypeVar("T")
log = logging.getLogger("ers.stores")


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether another connection holds the lock the statement needed (SQLITE_BUSY and its
    extended codes): worth trying again once it lets go."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY


class FileBusy(Exception):
    """Another connection holds the write lock of ``component``'s file (a unit of work over
    several files says which one)."""

    def __init__(self, component: str, error: sqlite3.Error) -> None:
        super().__init__(str(error))
        self.component = component


# When each file's wait was last logged: once a minute at most, however many writes wait.
_WAIT_LOGGED: dict[str, float] = {}


def store_failure(component: str, exc: sqlite3.Error) -> StoreUnavailable:
    """The store's failure for SQLite's error: StoreDamaged when the file's content is."""
    damaged = not_a_database(exc)
    return (StoreDamaged if damaged else StoreUnavailable)(component, str(exc))


async def outwaiting_writers(component: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()``, tried again while another connection holds the file's write lock, with
    sleeps on the loop between tries (other requests go on meanwhile) and for up to
    ``BUSY_TIMEOUT_MS`` in all. ``attempt`` takes and lets go of its own locks and rolls back
    its own transaction: nothing is held across a sleep. Other errors, and a lock held
    longer, raise StoreUnavailable naming the file (``component``, or the FileBusy's)."""
    deadline, pause = 0.0, 0.002
    while True:
        try:
            return await attempt()
        except (sqlite3.Error, FileBusy) as exc:
            busy = exc.component if isinstance(exc, FileBusy) else component
            if isinstance(exc, sqlite3.Error) and not is_busy(exc):
                raise store_failure(component, exc) from exc
            now = time.monotonic()
            if not deadline:
                deadline = now + BUSY_TIMEOUT_MS / 1000
                if now - _WAIT_LOGGED.get(busy, -60.0) >= 60:
                    _WAIT_LOGGED[busy] = now
                    log.info(
                        "the %s store's file is locked by another connection; its writes "
                        "wait for it, %g s at most each",
                        busy,
                        BUSY_TIMEOUT_MS / 1000,
                    )
            if now >= deadline:
                raise StoreUnavailable(
                    busy,
                    f"{exc}: another connection has held its write lock for more than "
                    f"{BUSY_TIMEOUT_MS / 1000:g} s (an open sqlite3 shell or tool on the file?)",
                ) from exc
        try:
            await asyncio.sleep(pause)
        except asyncio.CancelledError:
            # The call's limit ran out while the file was locked.
            note_cut_waiting(busy, deadline - BUSY_TIMEOUT_MS / 1000)
            raise
        pause = min(pause * 2, 0.1)


# Once a checkpoint has emptied it, the write-ahead log is cut back to this size.
WAL_SIZE_LIMIT_BYTES = 32 * 1024 * 1024


class SqliteTransaction:
    """The unit of work's statements on a connection inside an open transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        # The store of the statement running now: named when it fails.
        self.component = ""

    async def rows(self, component: str, sql: str, params: Sequence[Any]) -> list[Any]:
        self.component = component
        return self.conn.execute(sql, params).fetchall()

    async def insert(self, component: str, sql: str, params: Sequence[Any]) -> int:
        self.component = component
        return self.conn.execute(sql, params).lastrowid or 0


Upgrade = Callable[[sqlite3.Connection], None]


def no_upgrade(conn: sqlite3.Connection) -> None:
    """A file made by any ERS release already has this component's schema."""


class SqliteStore:
    """The file of ``component``, created with the statements of ``ddl``; ``upgrade`` brings
    a file made by an older ERS up to it (inside the opening transaction)."""

    dialect = SQLITE
    # Statements name the component's tables ``<schema>.<table>``: here the file itself.
    schema = "main"

    def __init__(
        self, component: str, path: Path, ddl: Sequence[str], upgrade: Upgrade = no_upgrade
    ) -> None:
        self.component = component
        self.path = Path(path)
        self.ddl = ddl
        self.upgrade = upgrade
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._paused_reason: str | None = None
        # What SQLite said of the file's damage, and the file (device, inode) it said it of:
        # kept until another file is opened at the path (a rollback's swap).
        self.damage: str | None = None
        self._damaged_file: tuple[int, int] | None = None
        # The checkpointer's own connection, opened and closed under its lock.
        self._checkpoint_lock = threading.Lock()
        self._checkpoint_conn: sqlite3.Connection | None = None
        # Other connections to this file (the unit of work's), closed before this store's.
        self._close_listeners: list[Callable[[], None]] = []

    # -- lifecycle ---------------------------------------------------------------------

    def open(self) -> None:
        with self._lock:
            if self._conn is not None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                conn = self._connect()
                with conn:
                    for statement in self.ddl:
                        conn.execute(statement)
                    self.upgrade(conn)
            except sqlite3.Error as exc:
                raise StoreUnavailable(self.component, f"cannot open {self.path}: {exc}") from exc
            conn.execute("PRAGMA busy_timeout=0")
            self._conn = conn
            self._paused_reason = None
            if self.damage is not None and self._damaged_file != _file_of(self.path):
                self.damage = None  # a refused or failed rollback reopens the same file
        CHECKPOINTER.add(self)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        enter_wal(conn, BUSY_TIMEOUT_MS / 1000)
        # Opening waits inside SQLite (it runs once, before serving); statements on the loop
        # do not (``outwaiting_writers``).
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA wal_autocheckpoint=0")  # CHECKPOINTER does it
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        return conn

    def _afresh_if_read_only(self, exc: sqlite3.Error) -> None:
        """SQLite opens a file it may not write (an immutable file, a read-only mount)
        read-only, without a word, and such a connection stays so after the file is fixed:
        on its refusal, the store's connection is replaced by a fresh one, which writes once
        the file can. Under the store's lock."""
        if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) != sqlite3.SQLITE_READONLY:
            return
        try:
            fresh = self._connect()
        except sqlite3.Error:
            return  # still unusable: the old connection keeps serving reads
        fresh.execute("PRAGMA busy_timeout=0")
        old, self._conn = self._conn, fresh
        if old is not None:
            old.close()

    def on_close(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever the store closes (a pause included), before its own
        connection goes: another connection to the file must not outlive a rollback's swap."""
        self._close_listeners.append(listener)

    def close(self) -> None:
        CHECKPOINTER.discard(self)
        with self._lock, self._checkpoint_lock:
            for listener in self._close_listeners:
                listener()
            if self._checkpoint_conn is not None:
                self._checkpoint_conn.close()
                self._checkpoint_conn = None
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def checkpoint(self) -> tuple[int, int, int] | None:
        """Copy the write-ahead log into the database file without waiting for the writer
        (PASSIVE), on a connection of the checkpointer's own; returns SQLite's (busy, log
        frames, frames checkpointed), or None while the store is closed or paused."""
        with self._checkpoint_lock:
            if self._conn is None:  # closed or paused: the file may be being swapped
                return None
            if self._checkpoint_conn is None:
                self._checkpoint_conn = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=rw",
                    uri=True,
                    timeout=0,
                    check_same_thread=False,
                )
            row = self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            return int(row[0]), int(row[1]), int(row[2])

    def pause(self, reason: str) -> None:
        """Close the file so it can be swapped; writers fail fast with ``reason`` meanwhile."""
        with self._lock:
            self.close()
            self._paused_reason = reason

    def resume(self) -> None:
        """Reopen after a pause, on whatever file a rollback put at the path."""
        self.open()

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    # -- statements --------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if self._paused_reason is not None:
                raise StorePaused(self.component, self._paused_reason)
            raise StoreUnavailable(self.component, "the store is closed")
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The store's connection in a transaction, under the store's lock (the caller's);
        a refusal to write replaces a read-only connection (``_afresh_if_read_only``)."""
        conn = self._connection()
        try:
            with conn:
                yield conn
        except sqlite3.Error as exc:
            self.note_damage(exc)
            self._afresh_if_read_only(exc)
            raise

    def note_damage(self, exc: sqlite3.Error) -> None:
        """Remember a damaged file, which the write probe (one page of its own) may miss."""
        if not_a_database(exc):
            self.damage, self._damaged_file = str(exc), _file_of(self.path)

    def _run(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        """One statement in its own transaction, under the store's lock."""
        with self._lock, self._transaction() as conn:
            return conn.execute(sql, params).fetchall()

    async def _statement(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        try:  # the usual case, without a coroutine of its own
            return self._run(sql, params)
        except sqlite3.Error as exc:
            if not is_busy(exc):
                raise store_failure(self.component, exc) from exc

        async def again() -> list[sqlite3.Row]:
            return self._run(sql, params)

        return await outwaiting_writers(self.component, again)

    # Statements are short: they run inline on the loop, which costs less than a thread hop.
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self._statement(sql, params)

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return await self._statement(sql, params)

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = await self._statement(sql, params)
        return rows[0] if rows else None

    async def commit_unit(self, unit: Unit, policy: KeyPolicy | None = None) -> Applied:
        """Commit a unit that writes this file alone, in one transaction on its connection."""

        async def attempt() -> Applied:
            with self._lock, self._transaction() as conn:
                return await apply(
                    SqliteTransaction(conn),
                    {self.component: "main"},
                    unit,
                    dialect=SQLITE,
                    policy=policy or DEFAULT_POLICY,
                )

        return await outwaiting_writers(self.component, attempt)

    @contextmanager
    def exclusive(self) -> Iterator[Path]:
        """Hold the store's lock while another connection writes its file, so a rollback
        cannot pause the store meanwhile; raises StoreUnavailable while it is paused."""
        with self._lock:
            self._connection()
            yield self.path

    async def probe_writable(self) -> None:
        """Write, read back and delete a probe row; raises StoreUnavailable when it can't."""

        if self.damage is not None:  # its own page written and read back proves nothing
            raise StoreDamaged(self.component, f"{self.path} is damaged ({self.damage})")

        async def attempt() -> None:
            with self._lock, self._transaction() as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS _probe (v TEXT)")
                conn.execute("INSERT INTO _probe (v) VALUES ('probe')")
                if conn.execute("SELECT count(*) FROM _probe").fetchone()[0] < 1:
                    raise StoreUnavailable(self.component, "probe row not readable")
                conn.execute("DELETE FROM _probe")

        await outwaiting_writers(self.component, attempt)


def _file_of(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino
