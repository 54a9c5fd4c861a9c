"""The idempotency ledger on PostgreSQL, shared by every ERS replica: ``AlertLedger`` on a
connection pool, in the incidents schema (``ers_incidents.alert_ledger``). The table is its
own migration component (``alerts``): the ledger belongs to the service, the incidents to
telemetry.
"""

from __future__ import annotations

from service.incidents.ledger import AlertLedger, LedgerUnavailable
from service.incidents.store_pg import SCHEMA
from service.stores.pg_pool import PgPool, valid_identifier

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


class PgAlertLedger(AlertLedger):
    def __init__(self, url: str, schema: str = SCHEMA) -> None:
        """Opens a small connection pool to ``url`` (a migrated database); raises
        LedgerUnavailable when the server can't be used or the table is missing."""
        pool = PgPool(
            url,
            name="ers-alert-ledger",
            unavailable=_unavailable,
            schema=schema,
            tables=("alert_ledger",),
            component=COMPONENT,
        )
        super().__init__(pool)
