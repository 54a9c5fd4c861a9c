"""The idempotency ledger: one row per (fingerprint, startsAt, status) ever received.

Alertmanager retries deliveries and HA pairs send the same notification twice; the ledger
lets each firing or resolution act once. It lives in the incidents database (never rolled
back), in a table of its own.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path


class LedgerUnavailable(Exception):
    """The ledger could not record an alert; the webhook must answer 5xx so it is retried."""


class AlertLedger:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=2.0, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        with self._conn:
            self._conn.execute(
                """CREATE TABLE IF NOT EXISTS alert_ledger (
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
            )

    def record(self, fingerprint: str, starts_at: str, status: str, alertname: str) -> bool:
        """True the first time this (fingerprint, startsAt, status) arrives, else False."""
        try:
            with self._lock, self._conn:
                cursor = self._conn.execute(
                    "INSERT INTO alert_ledger (fingerprint, starts_at, status, alertname,"
                    " received_at) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT DO UPDATE SET deliveries = deliveries + 1",
                    (fingerprint, starts_at, status, alertname, time.time()),
                )
                if cursor.rowcount != 1:
                    return False
                row = self._conn.execute(
                    "SELECT deliveries FROM alert_ledger WHERE fingerprint = ? AND starts_at = ?"
                    " AND status = ?",
                    (fingerprint, starts_at, status),
                ).fetchone()
                return row[0] == 1
        except sqlite3.Error as exc:
            raise LedgerUnavailable(f"the alert ledger could not record the alert: {exc}") from exc

    def finish(
        self, fingerprint: str, starts_at: str, status: str, incident_id: str | None, outcome: str
    ) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE alert_ledger SET incident_id = ?, outcome = ? WHERE fingerprint = ?"
                " AND starts_at = ? AND status = ?",
                (incident_id, outcome, fingerprint, starts_at, status),
            )

    def entry(self, fingerprint: str, starts_at: str, status: str) -> dict | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT deliveries, incident_id, outcome FROM alert_ledger WHERE"
                " fingerprint = ? AND starts_at = ? AND status = ?",
                (fingerprint, starts_at, status),
            ).fetchone()
        if row is None:
            return None
        return {"deliveries": row[0], "incidentId": row[1], "outcome": row[2]}

    def close(self) -> None:
        with self._lock:
            self._conn.close()
