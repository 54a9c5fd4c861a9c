"""The PostgreSQL base the component stores build on when ``ERS_DATABASE_URL`` is set.

One ``PostgresDatabase`` per process: it migrates the schema at start (see
``postgres_migrations``) and then holds one psycopg connection pool that every component
store shares. Each component lives in its own schema (``ers_<component>``) so it can be
dumped and restored alone. Pooled connections are in autocommit mode: a statement is its own
transaction, one round trip; statements that must commit together use ``transaction()``.
A connection is pinged on checkout only when it has sat idle in the pool (a server restart
breaks idle ones), not on every statement of a busy service.
Failures become ``StoreUnavailable`` with a reason a person can act on; the URL appears
only redacted and the password never.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Self

import psycopg
from psycopg import waiting
from psycopg.abc import PQGen
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from backup.pg_rollback import ROLLBACK_LOCK_CLASS
from service.errors import (
    CommitUnknown,
    StatementRefused,
    StorePaused,
    StoreUnavailable,
    note_cut_waiting,
)
from service.stores.pg_connection import note_connect, server_location
from service.stores.pg_pool import (
    CONNECT_TIMEOUT_S,
    IDLE_CHECK_S,
    OUTAGE_WAIT_S,
    POOL_TIMEOUT_S,
    RECONNECT_TIMEOUT_S,
    password_of,
    refused_statement,
    scrub_password,
    unreachable_reason,
)
from service.stores.postgres_migrations import Migration, MigrationError, migrate
from service.stores.sql import POSTGRESQL as POSTGRES
from service.stores.unit_of_work import (
    DEFAULT_POLICY,
    Applied,
    KeyPolicy,
    Unit,
    apply,
    statement_count,
)

POOL_MIN_SIZE = 2
POOL_MAX_SIZE = 10

# How long the write probe waits for a lock on its table before it asks why: less than the
# stores check waits for it (3 s), so that a rollback holding the schema's tables (another
# replica's, for as long as its restore and safety snapshot take) is told as a pause.
PROBE_LOCK_WAIT_MS = 2000
# Whether a session (another replica's rollback, or an offline one) holds the rollback lock
# of a schema: the two-key advisory lock `backup.pg_rollback` takes until its swap commits.
_ROLLBACK_RUNNING_SQL = (
    "SELECT pg_catalog.count(*) AS n FROM pg_catalog.pg_locks WHERE locktype = 'advisory' "
    "AND granted AND objsubid = 2 AND database = (SELECT oid FROM pg_catalog.pg_database "
    "WHERE datname = pg_catalog.current_database()) AND classid = ?::bigint::oid "
    "AND objid = (pg_catalog.hashtext(?)::bigint & 4294967295)::oid"
)
ROLLBACK_ELSEWHERE = (
    "a rollback on another replica (or an `ers backup --offline` one) is replacing this "
    "store; its writes wait until that rollback is done"
)


class _ProbeLockWait(Exception):
    """The write probe waited ``PROBE_LOCK_WAIT_MS`` for a lock on its table."""


class _Connection(psycopg.AsyncConnection[DictRow]):
    """A pooled connection whose statement, cancelled by its caller's deadline (an agent's
    timeout cutting a store read), is closed at once: psycopg would send a cancel request
    and wait for the statement, up to 10 s against a frozen server, so a budget read cut
    at 5 s ended after the router's own deadline, which isolated the router. The pool
    replaces a closed connection; the server rolls the statement back when it finds the
    client gone."""

    @classmethod
    async def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        try:
            conn = await super().connect(conninfo, **kwargs)
        except psycopg.OperationalError as exc:
            note_connect(conninfo, exc)  # why the pool's waits for a connection run out
            raise
        note_connect(conninfo, None)
        return conn

    async def wait(
        self, gen: PQGen[Any], interval: float = 0.1, timeout: float | None = None
    ) -> Any:
        try:
            return await waiting.wait_async(
                gen, self.pgconn.socket, interval=interval, timeout=timeout
            )
        except asyncio.CancelledError:
            if self.pgconn.transaction_status == TransactionStatus.ACTIVE:
                self.pgconn.finish()
            raise


class PostgresDatabase:
    """The server behind every PostgreSQL store: start-up migrations and the shared pool."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._password = password_of(url)
        self.location = server_location(url)
        self.unreachable = False
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]] | None = None
        self._returned_at: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = (
            weakref.WeakKeyDictionary()
        )

    async def migrate(self, plan: Mapping[str, Sequence[Migration]]) -> list[tuple[str, int]]:
        """Bring the schemas of ``plan`` (component -> its migrations) up to date on a
        connection of its own; returns the (component, version) pairs applied."""
        try:
            async with await psycopg.AsyncConnection.connect(
                self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
            ) as conn:
                return await migrate(conn, plan)
        except MigrationError as exc:
            raise StoreUnavailable(exc.component, self.scrub(exc.reason)) from None
        except psycopg.Error as exc:
            raise StoreUnavailable("postgresql", self.reason(exc)) from None

    async def open(self, stores: Sequence[PostgresStore]) -> list[tuple[str, int]]:
        """Migrate the schemas of ``stores``, then open the pool; returns what was migrated."""
        if self.pool is not None:
            return []
        applied = await self.migrate({store.component: store.migrations for store in stores})
        pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]] = AsyncConnectionPool(
            self._url,
            connection_class=_Connection,
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            timeout=POOL_TIMEOUT_S,
            reconnect_timeout=RECONNECT_TIMEOUT_S,
            kwargs={
                "connect_timeout": CONNECT_TIMEOUT_S,
                "row_factory": dict_row,
                "autocommit": True,
            },
            # A server restart breaks every pooled connection; checking an idle one on
            # checkout swaps it for a fresh one instead of failing the caller's statement.
            check=self._check_if_idle,
            name="ers-stores",
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
        except PoolTimeout:
            await pool.close()
            raise StoreUnavailable(
                "postgresql",
                f"the connection pool to {self.location} did not fill within "
                f"{CONNECT_TIMEOUT_S * 2} s; check the server's max_connections and load",
            ) from None
        self.pool = pool
        return applied

    async def _check_if_idle(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if time.monotonic() - self._returned_at.get(conn, 0.0) > IDLE_CHECK_S:
            await AsyncConnectionPool.check_connection(conn)

    def note_used(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Called as a statement's connection goes back to the pool. (The pool's own
        ``reset`` hook would send every return through its worker tasks.)"""
        self._returned_at[conn] = time.monotonic()

    async def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            await pool.close()

    def scrub(self, text: str) -> str:
        return scrub_password(text, self._password)

    @property
    def url(self) -> str:
        """The database URL, password included: for connecting, never for a message."""
        return self._url

    def connection_wait_s(self) -> float:
        """How long a statement waits for a pooled connection."""
        return OUTAGE_WAIT_S if self.unreachable else POOL_TIMEOUT_S

    def reason(self, exc: psycopg.Error, waited_s: float | None = None) -> str:
        """What went wrong, in words a person can act on."""
        unreachable = unreachable_reason(exc, self.location, waited_s or POOL_TIMEOUT_S)
        if unreachable is not None:
            return self.scrub(unreachable)
        primary = exc.diag.message_primary or str(exc) or type(exc).__name__
        return self.scrub(primary)


def schema_of(component: str) -> str:
    return f"ers_{component}"


class PostgresTransaction:
    """The unit of work's statements on a cursor."""

    def __init__(self, cursor: psycopg.AsyncCursor[DictRow]) -> None:
        self.cursor = cursor

    async def rows(self, component: str, sql: str, params: Sequence[Any]) -> list[Any]:
        await self.cursor.execute(POSTGRES.sql(sql), params)
        return await self.cursor.fetchall() if self.cursor.description else []

    async def insert(self, component: str, sql: str, params: Sequence[Any]) -> int:
        rows = await self.rows(component, sql + " RETURNING id", params)
        return int(rows[0]["id"])


class PostgresStore:
    """The schema ``ers_<component>`` on the shared server, brought up to date by
    ``migrations`` (ordered, append-only) when the database opens."""

    dialect = POSTGRES

    def __init__(
        self, database: PostgresDatabase, component: str, migrations: Sequence[Migration]
    ) -> None:
        self.database = database
        self.component = component
        self.schema = schema_of(component)
        self.migrations = migrations
        self._paused_reason: str | None = None

    # -- lifecycle (the pool itself is opened and closed by the database) ---------------

    @property
    def is_open(self) -> bool:
        return self.database.pool is not None and self._paused_reason is None

    def pause(self, reason: str) -> None:
        """Writers and readers fail fast with ``reason`` until ``resume()``."""
        self._paused_reason = reason

    def resume(self) -> None:
        self._paused_reason = None

    def _unusable(self) -> StoreUnavailable:
        if self._paused_reason is not None:
            return StorePaused(self.component, self._paused_reason)
        return StoreUnavailable(self.component, "the store is closed")

    def open(self) -> None:
        """Ends a pause, as opening a paused SQLite store does (the pool is the database's)."""
        self.resume()

    # -- statements ----------------------------------------------------------------------

    @asynccontextmanager
    async def _cursor(
        self, *, transaction: bool = False
    ) -> AsyncIterator[psycopg.AsyncCursor[DictRow]]:
        """A cursor whose statements each commit on their own; with ``transaction``, all
        of the block's statements commit together when it ends, or none does."""
        pool = self.database.pool
        if pool is None or self._paused_reason is not None:
            raise self._unusable()
        began = time.monotonic()
        wait_s = self.database.connection_wait_s()
        # Set once the block's statements ran: leaving the transaction sends its COMMIT.
        committing = False
        try:
            async with pool.connection(timeout=wait_s) as conn:
                self.database.unreachable = False
                try:
                    async with conn.cursor() as cursor:
                        if not transaction:
                            yield cursor
                            return
                        async with conn.transaction():
                            yield cursor
                            committing = True
                finally:
                    self.database.note_used(conn)
        except PoolTimeout as exc:
            self.database.unreachable = True
            raise StoreUnavailable(self.component, self.database.reason(exc, wait_s)) from None
        except asyncio.CancelledError:
            note_cut_waiting(self.component, began)  # a frozen server: the call's limit ran out
            raise
        except psycopg.Error as exc:
            if refused_statement(exc):
                error: type[StoreUnavailable] = StatementRefused
            else:
                # A connection lost before the COMMIT took the transaction with it; one lost
                # during the COMMIT leaves open whether the server committed.
                error = CommitUnknown if committing else StoreUnavailable
            raise error(self.component, self.database.reason(exc)) from None

    async def commit_unit(self, unit: Unit, policy: KeyPolicy | None = None) -> Applied:
        """Commit a unit, whichever components it writes (one database holds every schema),
        in one transaction on one pooled connection. A unit of one statement runs in
        autocommit: one round trip instead of three."""
        single = statement_count(unit) == 1
        async with self._cursor(transaction=not single) as cursor:
            return await apply(
                PostgresTransaction(cursor),
                {name: schema_of(name) for name in unit.components()},
                unit,
                dialect=POSTGRES,
                policy=policy or DEFAULT_POLICY,
            )

    def check_usable(self) -> None:
        """Raise StoreUnavailable while the store is paused or closed."""
        if not self.is_open:
            raise self._unusable()

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        async with self._cursor() as cursor:
            await cursor.execute(POSTGRES.sql(sql), params)

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[DictRow]:
        async with self._cursor() as cursor:
            await cursor.execute(POSTGRES.sql(sql), params)
            return await cursor.fetchall()

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> DictRow | None:
        async with self._cursor() as cursor:
            await cursor.execute(POSTGRES.sql(sql), params)
            return await cursor.fetchone()

    async def fetch_one_anew(self, sql: str, params: Sequence[Any] = ()) -> DictRow | None:
        """One row, read on a connection of its own rather than a pooled one: after a
        connection was lost (a restart, ended sessions), the pool's others were most likely
        lost with it, and one used in the last ``IDLE_CHECK_S`` is handed out unchecked."""
        if self._paused_reason is not None:
            raise self._unusable()
        began = time.monotonic()
        try:
            async with await psycopg.AsyncConnection.connect(
                self.database.url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                row_factory=dict_row,
            ) as conn:
                cursor = await conn.execute(POSTGRES.sql(sql), params)
                return await cursor.fetchone()
        except asyncio.CancelledError:
            note_cut_waiting(self.component, began)
            raise
        except psycopg.Error as exc:
            raise StoreUnavailable(self.component, self.database.reason(exc)) from None

    # -- health --------------------------------------------------------------------------

    async def probe_writable(self) -> None:
        """Write, read back and delete a probe row in one transaction; raises
        StoreUnavailable when it can't, StorePaused while a rollback elsewhere holds it."""
        table = f"{self.schema}.write_probe"
        try:
            await self._probe(table)
        except _ProbeLockWait:
            row = await self.fetch_one(_ROLLBACK_RUNNING_SQL, (ROLLBACK_LOCK_CLASS, self.schema))
            if row is not None and row["n"] > 0:
                raise StorePaused(self.component, ROLLBACK_ELSEWHERE) from None
            raise StoreUnavailable(
                self.component,
                f"its write probe waited {PROBE_LOCK_WAIT_MS / 1000:g} s for a lock that "
                f"another session holds on {table}",
            ) from None

    async def _probe(self, table: str) -> None:
        async with self._cursor(transaction=True) as cursor:
            await cursor.execute(f"SET LOCAL lock_timeout = {PROBE_LOCK_WAIT_MS}")
            try:
                await cursor.execute(f"INSERT INTO {table} (v) VALUES ('probe')")
            except psycopg.errors.LockNotAvailable:
                raise _ProbeLockWait from None
            await cursor.execute(f"SELECT count(*) AS n FROM {table}")
            row = await cursor.fetchone()
            if row is None or row["n"] < 1:
                raise StoreUnavailable(self.component, "probe row not readable")
            await cursor.execute(f"DELETE FROM {table}")
