"""The idempotency ledger on PostgreSQL, shared by every ERS replica: the same API as
``AlertLedger``, in the incidents schema (``ers_incidents.alert_ledger``).

Alertmanager may deliver one notification to two replicas at once; the primary key and one
``INSERT … ON CONFLICT DO UPDATE … RETURNING deliveries`` make the first arrival the only one
that sees ``deliveries = 1``, whichever replica it reaches. The table is its own migration
component (``alerts``): the ledger belongs to the service, the incidents to telemetry.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg.rows import DictRow

from service.alerting.ledger import LedgerUnavailable
from telemetry.incident_pg import SCHEMA
from telemetry.pg_pool import PgPool, server_location, valid_identifier

COMPONENT = "alerts"


def ledger_migrations(schema: str = SCHEMA) -> tuple[tuple[str, ...], ...]:
    """The ledger's migrations, in order; append a tuple to change it, never edit one."""
    s = valid_identifier(schema)
    return (
        (
            f"CREATE SCHEMA IF NOT EXISTS {s}",
            f"""CREATE TABLE {s}.alert_ledger (
                fingerprint TEXT NOT NULL,
                starts_at TEXT NOT NULL,
                status TEXT NOT NULL,
                alertname TEXT NOT NULL,
                received_at DOUBLE PRECISION NOT NULL,
                deliveries INTEGER NOT NULL DEFAULT 1,
                incident_id TEXT,
                outcome TEXT,
                PRIMARY KEY (fingerprint, starts_at, status)
            )""",
        ),
    )


MIGRATIONS = ledger_migrations()


def _unavailable(reason: str) -> LedgerUnavailable:
    return LedgerUnavailable(f"the alert ledger is unavailable: {reason}")


class PgAlertLedger:
    def __init__(self, url: str, schema: str = SCHEMA) -> None:
        """Opens a small connection pool to ``url`` (a migrated database); raises
        LedgerUnavailable when the server can't be used or the table is missing."""
        self.schema = valid_identifier(schema)
        self.table = f"{self.schema}.alert_ledger"
        self.location = server_location(url)
        self._pool = PgPool(
            url, name="ers-alert-ledger", unavailable=_unavailable, verify=self._check_table
        )

    def _check_table(self, cursor: psycopg.Cursor[DictRow]) -> None:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL AS present", (self.table,))
        row = cursor.fetchone()
        if row is None or not row["present"]:
            raise _unavailable(
                f"{self.table} is missing in the database at {self.location}; run the "
                f"PostgreSQL migrations (component {COMPONENT!r}) before opening the ledger"
            )

    def record(self, fingerprint: str, starts_at: str, status: str, alertname: str) -> bool:
        """True the first time this (fingerprint, startsAt, status) arrives at any replica,
        else False."""
        with self._pool.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {self.table} AS ledger (fingerprint, starts_at, status, alertname,"
                " received_at) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (fingerprint, starts_at, status)"
                " DO UPDATE SET deliveries = ledger.deliveries + 1 RETURNING deliveries",
                (fingerprint, starts_at, status, alertname, time.time()),
            )
            row = cursor.fetchone()
        return row is not None and row["deliveries"] == 1

    def finish(
        self, fingerprint: str, starts_at: str, status: str, incident_id: str | None, outcome: str
    ) -> None:
        with self._pool.cursor() as cursor:
            cursor.execute(
                f"UPDATE {self.table} SET incident_id = %s, outcome = %s WHERE fingerprint = %s"
                " AND starts_at = %s AND status = %s",
                (incident_id, outcome, fingerprint, starts_at, status),
            )

    def entry(self, fingerprint: str, starts_at: str, status: str) -> dict[str, Any] | None:
        with self._pool.cursor() as cursor:
            cursor.execute(
                f"SELECT deliveries, incident_id, outcome FROM {self.table} WHERE"
                " fingerprint = %s AND starts_at = %s AND status = %s",
                (fingerprint, starts_at, status),
            )
            row = cursor.fetchone()
        if row is None:
            return None
        return {
            "deliveries": row["deliveries"],
            "incidentId": row["incident_id"],
            "outcome": row["outcome"],
        }

    def close(self) -> None:
        self._pool.close()
