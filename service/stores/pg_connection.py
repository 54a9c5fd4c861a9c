"""A synchronous PostgreSQL connection that says why connecting failed and never waits for
good on a server that stopped answering; and the server's location, fit for logs."""

from __future__ import annotations

import time
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import psycopg
from psycopg.abc import PQGen
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow

# A statement runs at most this long: one stuck behind another session's lock must not hold
# the incident worker, or a request's thread, for ever.
STATEMENT_TIMEOUT_S = 10.0
# How long a connection may stay quiet past the server's own statement_timeout: by default
# ANSWER_WAIT_S, set per connection from its pool's.
ANSWER_MARGIN_S = 5.0
ANSWER_WAIT_S = STATEMENT_TIMEOUT_S + ANSWER_MARGIN_S


# Why a pool's last attempt to connect failed, by server location, until one succeeds: a
# wait for a connection that runs out says why none came (the pool logs it only at a level
# ERS keeps quiet, a line per reconnect), not "unreachable" of a server refusing a password.
_CONNECT_FAILED: dict[str, str] = {}


def note_connect(conninfo: str, failure: psycopg.Error | None) -> None:
    """Said by a pool's connection class after each attempt to connect."""
    if failure is None:
        _CONNECT_FAILED.pop(server_location(conninfo), None)
    else:
        _CONNECT_FAILED[server_location(conninfo)] = str(failure)


def connect_failure(location: str) -> str | None:
    """Why the last attempt to connect to ``location`` failed, None once one succeeded."""
    return _CONNECT_FAILED.get(location)


class NotingConnection(psycopg.Connection[DictRow]):
    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        try:
            conn = super().connect(conninfo, **kwargs)
        except psycopg.OperationalError as exc:
            note_connect(conninfo, exc)
            raise
        note_connect(conninfo, None)
        return conn

    # Set from its pool's statement_timeout when it is configured.
    answer_wait_s = ANSWER_WAIT_S

    def wait(self, gen: PQGen[Any], interval: float = 0.1, timeout: float | None = None) -> Any:
        """A server that stops answering without closing its connections (frozen, its host
        paused) cannot run its statement_timeout: a statement waited for it for good, and an
        alert's delivery with it, where reads answered 503 in 0.5 s. Once the connection has
        been quiet for ``answer_wait_s`` (no byte to read, no room to write), it is closed
        (the pool replaces it) and the statement fails. Statements sent one by one are each
        judged on their own; a pipelined batch (``executemany``) is answered at its end, so
        it is cut past ``answer_wait_s`` in all."""
        if timeout is not None:
            return super().wait(gen, interval, timeout)
        limit = self.answer_wait_s
        try:
            return super().wait(_answered_within(gen, limit), interval)
        except _NoAnswer:
            self.pgconn.finish()
            raise psycopg.OperationalError(
                f"the server did not answer within {limit:g} s"
            ) from None


class _NoAnswer(Exception):
    pass


def _answered_within(gen: PQGen[Any], limit_s: float) -> PQGen[Any]:
    """``gen`` as it is, failing with _NoAnswer once its socket has been quiet for
    ``limit_s``: psycopg's wait sends it 0 at each interval that nothing happened."""
    quiet_since = time.monotonic()
    try:
        wanted = next(gen)
        while True:
            ready = yield wanted
            if ready:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > limit_s:
                raise _NoAnswer
            wanted = gen.send(ready)
    except StopIteration as done:
        return done.value


_WHERE = ("host", "hostaddr", "port")


def server_location(url: str) -> str:
    """Where the server is, fit for logs: the URL without its password and query, or for a
    ``key=value`` conninfo string its host, port and database."""
    if "://" in url:
        try:
            parts = urlsplit(url)
            netloc = parts.netloc.rpartition("@")[2]
            if parts.username:
                netloc = f"{parts.username}@{netloc}"
            shown = f"{parts.scheme}://{netloc}{parts.path}"  # "//" kept with no host
            # The server may be named in the query (postgresql:///ers?host=db&port=5433).
            where = [f"{k}={v[-1]}" for k, v in parse_qs(parts.query).items() if k in _WHERE]
            return f"{shown} ({' '.join(where)})" if where else shown
        except ValueError:
            return "(a database URL that does not parse; not shown)"
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return "(a connection string that does not parse; not shown)"
    return " ".join(f"{key}={info[key]}" for key in ("host", "port", "dbname") if key in info)
