"""The names a replica's PostgreSQL sessions carry (``application_name``, at most 63
characters): a refusal names who holds a lock by them, and a replica whose presence session
(``service.fleet.presence``) is gone has stopped, so what it took (an alert's attempt, an
incident's action) was lost with it."""

from __future__ import annotations

import os
import socket


def session_name(role: str, pid: int | str | None = None, host: str | None = None) -> str:
    return f"{role} pid {pid or os.getpid()} on {host or socket.gethostname()}"[:63]


def presence_name(replica: str | None = None) -> str:
    """The name the presence session of ``replica`` (``host:pid``, as the fleet names it;
    this process by default) carries while that replica runs."""
    if replica is None:
        return session_name("ers serve")
    host, _, pid = replica.rpartition(":")
    return session_name("ers serve", pid, host)


def session_alive(name: str) -> str:
    """SQL that is true while a session of the current database carries the name ``name``
    (an SQL expression: a column, or a placeholder) as its ``application_name``."""
    return f"EXISTS (SELECT 1 {_sessions_of(name)})"


def sessions_named(name: str) -> str:
    """SQL: how many sessions of the current database carry the name ``name`` (an SQL
    expression) as their ``application_name``; more than this process's own means another
    process runs under its name (hosts that share a hostname, containers pid 1)."""
    return f"(SELECT count(*) {_sessions_of(name)})"


def _sessions_of(name: str) -> str:
    return f"FROM pg_stat_activity WHERE datname = current_database() AND application_name = {name}"
