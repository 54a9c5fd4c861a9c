"""The audit trail: who did what and why, on the incident store's database (never rolled
back): the incidents SQLite file, or on PostgreSQL the incidents schema, which every replica
shares (its table there is the migrations' component ``audit``)."""

from __future__ import annotations

import json
import time
from typing import Any

from service.incidents.store_pg import SCHEMA
from service.stores.postgres_migrations import Migration
from service.stores.sql import Database, create_table_on_sqlite

COMPONENT = "audit"
SQLITE_SCHEMA = """CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
)"""


# The audit table's migrations, in order; append a tuple to change it, never edit one.
MIGRATIONS: tuple[Migration, ...] = (
    (
        f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
        f"""CREATE TABLE {SCHEMA}.audit (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at DOUBLE PRECISION NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            detail TEXT NOT NULL
        )""",
    ),
)


class AuditLog:
    def __init__(self, database: Database) -> None:
        """The trail on the incident store's ``database``, which closes with the store."""
        create_table_on_sqlite(database, SQLITE_SCHEMA)
        self._database = database

    def record(self, actor: str, action: str, detail: dict[str, Any]) -> None:
        self._database.rows(
            "INSERT INTO audit (at, actor, action, detail) VALUES (?, ?, ?, ?)",
            (time.time(), actor, action, json.dumps(detail, default=str)),
        )

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._database.rows(
            "SELECT at, actor, action, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [
            {
                "at": row["at"],
                "actor": row["actor"],
                "action": row["action"],
                "detail": json.loads(row["detail"]),
            }
            for row in rows
        ]
