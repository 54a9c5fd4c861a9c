"""A connection of the fleet that fails is logged once, and its recovery once, not on every
retry."""

from __future__ import annotations

import logging

import psycopg
from psycopg.rows import DictRow
from psycopg_pool import AsyncConnectionPool

from service.stores.postgres import PostgresDatabase

log = logging.getLogger("ers.fleet")

# The longest wait between two attempts on a failing connection.
MAX_BACKOFF_S = 30.0


def pool_of(database: PostgresDatabase) -> AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]:
    """The database's pool; a closed one fails like a lost connection, and is retried so."""
    pool = database.pool
    if pool is None:
        raise psycopg.OperationalError("the connection pool is closed")
    return pool


class Outage:
    """Logs a failing connection once, and its recovery once."""

    def __init__(
        self,
        what: str,
        *,
        subject: str = "fleet breaker overrides",
        meanwhile: str = "local breakers keep working meanwhile",
    ) -> None:
        self.what = what
        self.subject = subject
        self.meanwhile = meanwhile
        self.failing = False

    def failed(self, reason: str, retry_s: float) -> None:
        if not self.failing:
            self.failing = True
            log.warning(
                "%s: %s failed (%s); retrying at most %g s apart, %s",
                self.subject,
                self.what,
                reason,
                retry_s,
                self.meanwhile,
            )

    def recovered(self) -> None:
        if self.failing:
            self.failing = False
            log.info("%s: %s works again", self.subject, self.what)
