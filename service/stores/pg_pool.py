"""A small synchronous PostgreSQL connection pool, for stores that are called from threads
(the incident worker, ``asyncio.to_thread``) and now and then straight from the event loop.

Connections are in autocommit mode: a statement is its own transaction, one round trip;
statements that must commit together use ``cursor(transaction=True)``. The pool is also a
``sql.Database`` (``rows``, ``transaction``) for stores written once over both engines: it
takes ``?`` placeholders, and finds unqualified table names in its ``schema`` (the
connections' search path). A connection is pinged on checkout only when it has sat idle in
the pool (a server restart breaks idle ones), not before every statement of a busy worker.
NUL characters, which PostgreSQL text refuses, are stored as U+FFFD. Every psycopg failure
becomes the caller's own exception, with a reason a person can act on that names the server
by its redacted location and never shows the password.
"""

from __future__ import annotations

import re
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.abc import Buffer
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg.types.string import StrDumper, StrDumperUnknown
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from service.stores.pg_connection import (
    ANSWER_MARGIN_S,
    STATEMENT_TIMEOUT_S,
    NotingConnection,
    connect_failure,
    server_location,
)
from service.stores.sql import POSTGRESQL

POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 4
# A statement waits at most this long for a free connection: a worker or a request must not
# hang on a server that is gone.
POOL_TIMEOUT_S = 3.0
# Once a wait for a connection has run out (the server is down or unreachable), statements
# wait only this long until one gets a connection again: a request gets its 503 in well
# under a second instead of after a full wait for each statement it makes.
OUTAGE_WAIT_S = 0.5
# A pool's attempt to replace a lost connection doubles its wait after each failure (1, 2,
# 4 s ...) and gives up after this long; a request then starts a fresh one. Left at the
# pool's 5 minutes, an outage of 90 s was followed by 29 s of 503s with the server back.
RECONNECT_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5
# A connection back from the pool after sitting idle longer than this is pinged first.
IDLE_CHECK_S = 2.0


class PgPool:
    """``unavailable(reason)`` builds the exception raised for any database failure."""

    dialect = POSTGRESQL

    def __init__(
        self,
        url: str,
        *,
        name: str,
        unavailable: Callable[[str], Exception],
        schema: str | None = None,
        tables: Sequence[str] = (),
        component: str = "",
        refused: Callable[[str], Exception] | None = None,
        min_size: int = POOL_MIN_SIZE,
        max_size: int = POOL_MAX_SIZE,
        statement_timeout_s: float = STATEMENT_TIMEOUT_S,
    ) -> None:
        """Connects once first, so that a wrong URL or password fails here with the
        server's reason, or the schema's missing ``tables`` with the migrations of
        ``component`` (the migration components that make them) to run, then fills the
        pool. ``refused(reason)``, when given, builds the exception for a statement the
        server refused and rolled back (a value it cannot store), as against one that could
        not reach it."""
        self.location = server_location(url)
        self.statement_timeout_s = statement_timeout_s
        self._password = password_of(url)
        self._unavailable = unavailable
        self._refused = refused
        # Set when a wait for a connection ran out; statements then wait OUTAGE_WAIT_S.
        self.unreachable = False
        self._search_path = valid_identifier(schema) if schema else None
        self._returned_at: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = (
            weakref.WeakKeyDictionary()
        )
        connection_options: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "autocommit": True,
            "application_name": name,
            "row_factory": dict_row,
        }
        try:
            with psycopg.connect(url, **connection_options) as conn:
                self._configure(conn)
                missing = [
                    row["name"]
                    for row in conn.execute(
                        "SELECT name FROM unnest(%s::text[]) AS name "
                        "WHERE to_regclass(name) IS NULL",
                        ([f"{schema}.{table}" for table in tables],),
                    )
                ]
        except psycopg.Error as exc:
            raise unavailable(self.reason(exc)) from None
        if missing:
            raise unavailable(
                f"{', '.join(missing)} missing in the database at {self.location}; run the "
                f"PostgreSQL migrations ({component}) first: `ers serve` runs them "
                "when it starts"
            )
        self._pool: ConnectionPool[psycopg.Connection[DictRow]] = ConnectionPool(
            url,
            connection_class=NotingConnection,
            min_size=min_size,
            max_size=max_size,
            timeout=POOL_TIMEOUT_S,
            reconnect_timeout=RECONNECT_TIMEOUT_S,
            kwargs=connection_options,
            configure=self._configure,
            check=self._check_if_idle,
            reset=self._note_returned,
            name=name,
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
        except PoolTimeout:
            self._pool.close()
            raise unavailable(
                f"the connection pool to {self.location} did not fill within "
                f"{CONNECT_TIMEOUT_S * 2} s; check the server's max_connections and load"
            ) from None

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        _store_nul_as_replacement(conn)
        conn.execute(f"SET statement_timeout = {int(self.statement_timeout_s * 1000)}")
        conn.answer_wait_s = self.statement_timeout_s + ANSWER_MARGIN_S
        if self._search_path is not None:
            conn.execute(f"SET search_path TO {self._search_path}")

    def _check_if_idle(self, conn: psycopg.Connection[Any]) -> None:
        if time.monotonic() - self._returned_at.get(conn, 0.0) > IDLE_CHECK_S:
            ConnectionPool.check_connection(conn)

    def _note_returned(self, conn: psycopg.Connection[Any]) -> None:
        self._returned_at[conn] = time.monotonic()

    @contextmanager
    def cursor(self, *, transaction: bool = False) -> Iterator[psycopg.Cursor[DictRow]]:
        """A cursor whose statements each commit on their own; with ``transaction``, all of
        the block's statements commit together when it ends, or none does."""
        wait_s = OUTAGE_WAIT_S if self.unreachable else POOL_TIMEOUT_S
        try:
            with self._pool.connection(timeout=wait_s) as conn:
                self.unreachable = False
                with conn.cursor() as cursor:
                    if not transaction:
                        yield cursor
                        return
                    with conn.transaction():
                        yield cursor
        except PoolTimeout as exc:
            self.unreachable = True
            raise self._unavailable(self.reason(exc, wait_s)) from None
        except psycopg.Error as exc:
            if self._refused is not None and refused_statement(exc):
                raise self._refused(self.reason(exc)) from None
            raise self._unavailable(self.reason(exc)) from None

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[DictRow]:
        with self.cursor() as cursor:
            cursor.execute(POSTGRESQL.sql(sql), params)
            return cursor.fetchall() if cursor.description is not None else []

    @contextmanager
    def transaction(self) -> Iterator[_Statements]:
        with self.cursor(transaction=True) as cursor:
            yield _Statements(cursor)

    def close(self) -> None:
        self._pool.close()

    def scrub(self, text: str) -> str:
        return scrub_password(text, self._password)

    def reason(self, exc: psycopg.Error, waited_s: float = POOL_TIMEOUT_S) -> str:
        """What went wrong, in words a person can act on."""
        if isinstance(exc, PoolClosed):
            return "it has been closed"
        if isinstance(exc, psycopg.errors.QueryCanceled):
            return (
                f"a statement ran longer than {self.statement_timeout_s:g} s at "
                f"{self.location} and was cancelled: another session may hold a lock on the "
                f"{self._search_path or 'incidents'} schema (see pg_stat_activity), or the "
                "server is overloaded"
            )
        unreachable = unreachable_reason(exc, self.location, waited_s)
        if unreachable is not None:
            return self.scrub(unreachable)
        primary = exc.diag.message_primary or str(exc) or type(exc).__name__
        return self.scrub(f"PostgreSQL at {self.location}: {primary}")


class _Statements:
    """A cursor that takes ``?`` placeholders."""

    def __init__(self, cursor: psycopg.Cursor[DictRow]) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[DictRow]:
        return self._cursor.execute(POSTGRESQL.sql(sql), params)

    def executemany(self, sql: str, params: Any) -> None:
        self._cursor.executemany(POSTGRESQL.sql(sql), params)


def refused_statement(exc: psycopg.Error) -> bool:
    """The server refused the statement and rolled it back (or the driver refused to send
    it); a lost, cancelled or timed-out connection leaves open whether it committed."""
    return isinstance(exc, psycopg.DatabaseError) and not isinstance(
        exc, psycopg.OperationalError | psycopg.InterfaceError
    )


def unreachable_reason(exc: psycopg.Error, location: str, waited_s: float) -> str | None:
    """Why the server at ``location`` could not be used when reaching it failed (no pooled
    connection within ``waited_s``, a connection refused or lost), in words a person can act
    on; None when the server answered with an error of its own."""
    if isinstance(exc, PoolTimeout):
        if failed := connect_failure(location):
            line = failed.strip().splitlines()[0] if failed.strip() else "no reason given"
            why = refused_connection(failed, location) or (
                f"the last attempt to connect to {location} failed ({line})"
            )
            return f"no PostgreSQL connection within {waited_s:g} s: {why}"
        return (
            f"no PostgreSQL connection within {waited_s:g} s: the server at {location} is "
            "unreachable or overloaded; check that it is running"
        )
    if isinstance(exc, psycopg.OperationalError):
        if refused := refused_connection(str(exc), location):
            return refused
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (
            f"cannot use PostgreSQL at {location} ({first}); check that the server is running "
            "and that ERS_DATABASE_URL names the right host, database and role"
        )
    return None


_PASSWORD_FAILED = re.compile(r'password authentication failed for user "([^"]*)"')
# libpq's words for a TCP port, or a socket file, where no server listens.
_NOT_LISTENING = re.compile(
    r"failed: connection refused|on socket .* failed: no such file or directory", re.IGNORECASE
)


def refused_connection(message: str, location: str) -> str | None:
    """The two connection failures with one cause each, named as such: the server refused
    the password (PostgreSQL says the same of a role it does not have), or nothing listens
    where ERS_DATABASE_URL points. None for any other."""
    if role := _PASSWORD_FAILED.search(message):
        return (
            f'PostgreSQL at {location} refused the password of role "{role[1]}", or has no '
            "such role (password authentication failed): put that role's password in "
            "ERS_DATABASE_URL, or name a role that exists"
        )
    if _NOT_LISTENING.search(message):
        return (
            f"the PostgreSQL server at {location} is not running (nothing accepts connections "
            "there): start it, or correct the host and port in ERS_DATABASE_URL if it runs "
            "elsewhere"
        )
    return None


def scrub_password(text: str, password: str | None) -> str:
    """``text`` on one line, without ``password``, at most 300 characters: fit for a log
    line or an error body."""
    text = " ".join(text.split())
    if password:
        text = text.replace(password, "***")
    return text[:300]


def password_of(url: str) -> str | None:
    """The password a database URL or conninfo string carries, to keep out of messages."""
    try:
        return conninfo_to_dict(url).get("password") or None  # type: ignore[return-value]
    except psycopg.Error:
        # A URL that does not parse may still carry one; keep it out of messages.
        match = re.search(r"://[^:/@]*:([^@]*)@", url)
        return match.group(1) if match else None


def storable_text(value: str) -> str:
    """``value`` as PostgreSQL can store it: text refuses NUL characters."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


class _StorableTextUnknown(StrDumperUnknown):
    def dump(self, obj: str) -> Buffer | None:
        return super().dump(storable_text(obj))


class _StorableText(StrDumper):
    def dump(self, obj: str) -> Buffer | None:
        return super().dump(storable_text(obj))


def _store_nul_as_replacement(conn: psycopg.Connection[Any]) -> None:
    """Spans and alerts from outside may carry NUL characters, which PostgreSQL text refuses:
    one such value must not fail its whole batch (or turn a lookup into an error), so every
    string parameter of the pool's connections has its NULs replaced by U+FFFD."""
    conn.adapters.register_dumper(str, _StorableText)
    conn.adapters.register_dumper(str, _StorableTextUnknown)


def valid_identifier(name: str) -> str:
    """``name`` if it can be put into SQL as a schema name as it is, else ValueError."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(
            f"schema name {name!r} must be lowercase letters, digits and underscores, "
            "starting with a letter or underscore"
        )
    return name
