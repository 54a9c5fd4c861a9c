"""The idempotency ledger: one row per (fingerprint, startsAt, status) ever received.

Alertmanager retries deliveries and HA pairs send the same notification twice; the ledger
lets each firing or resolution act once. It lives beside the incidents (never rolled back),
in a table of its own on the incident store's database: the incidents SQLite file, or on
PostgreSQL the incidents schema, where replicas that receive one notification at once share
it (its table there is the migrations' component ``alerts``).
The primary key and one ``INSERT … ON CONFLICT DO UPDATE … RETURNING deliveries`` make the
first arrival the only one that sees ``deliveries = 1``, whichever writer it reaches.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from service.incidents.model import IncidentStoreUnavailable
from service.incidents.store_pg import SCHEMA
from service.stores.pg_pool import valid_identifier
from service.stores.sql import Database, create_table_on_sqlite

COMPONENT = "alerts"

SQLITE_SCHEMA = """CREATE TABLE IF NOT EXISTS alert_ledger (
    fingerprint TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    status TEXT NOT NULL,
    alertname TEXT NOT NULL,
    received_at REAL NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1,
    incident_id TEXT,
    outcome TEXT,
    PRIMARY KEY (fingerprint, starts_at, status)
)"""
KEY = "fingerprint = ? AND starts_at = ? AND status = ?"


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


class LedgerUnavailable(Exception):
    """The ledger could not record an alert; the webhook must answer 5xx so it is retried."""


class AlertLedger:
    def __init__(self, database: Database) -> None:
        """The ledger on the incident store's ``database``, which closes with the store."""
        create_table_on_sqlite(database, SQLITE_SCHEMA)
        self._database = database

    def record(self, fingerprint: str, starts_at: str, status: str, alertname: str) -> bool:
        """True the first time this (fingerprint, startsAt, status) arrives at any writer,
        else False."""
        try:
            rows = self._database.rows(
                "INSERT INTO alert_ledger AS ledger (fingerprint, starts_at, status,"
                " alertname, received_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (fingerprint, starts_at, status)"
                " DO UPDATE SET deliveries = ledger.deliveries + 1 RETURNING deliveries",
                (fingerprint, starts_at, status, alertname, time.time()),
            )
        except (sqlite3.Error, IncidentStoreUnavailable) as exc:
            raise LedgerUnavailable(f"the alert ledger could not record the alert: {exc}") from exc
        return bool(rows) and rows[0]["deliveries"] == 1

    def finish(
        self, fingerprint: str, starts_at: str, status: str, incident_id: str | None, outcome: str
    ) -> None:
        self._database.rows(
            f"UPDATE alert_ledger SET incident_id = ?, outcome = ? WHERE {KEY}",
            (incident_id, outcome, fingerprint, starts_at, status),
        )

    def entry(self, fingerprint: str, starts_at: str, status: str) -> dict[str, Any] | None:
        rows = self._database.rows(
            f"SELECT deliveries, incident_id, outcome FROM alert_ledger WHERE {KEY}",
            (fingerprint, starts_at, status),
        )
        if not rows:
            return None
        return {
            "deliveries": rows[0]["deliveries"],
            "incidentId": rows[0]["incident_id"],
            "outcome": rows[0]["outcome"],
        }
