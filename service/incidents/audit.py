"""The audit trail: who did what and why, on the incident store's database (never rolled
back): the incidents SQLite file, or on PostgreSQL the incidents schema, which every replica
shares (its table there is the migrations' component ``audit``)."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from typing import Any

from service.incidents.store_pg import SCHEMA
from service.stores.postgres_migrations import Migration
from service.stores.sql import Database, create_table_on_sqlite

COMPONENT = "audit"
# The rollbacks' entries: one before it begins, then its outcome, or at a later start on its
# host the word that the process running it stopped first (service.backups.rollbacks).
ROLLBACK_STARTED, ROLLBACK_OUTCOMES = "rollback_started", ("rollback", "rollback_interrupted")
# How many of the newest rollbacks a start looks at for one with no outcome.
RECENT_ROLLBACKS = 200
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


def rollback_run() -> dict[str, Any]:
    """What a rollback's start carries besides its request: its run, which its outcome names
    too, and the process running it (host and pid), which a later start on that host can find
    gone."""
    return {"run": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}


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

    def unfinished_rollbacks(self) -> list[dict[str, Any]]:
        """Of the newest rollbacks started (``RECENT_ROLLBACKS``), those with a run and no
        outcome in the trail, oldest first: running now, or cut off by their process's end."""
        started = self._database.rows(
            "SELECT at, actor, detail FROM audit WHERE action = ? ORDER BY id DESC LIMIT ?",
            (ROLLBACK_STARTED, RECENT_ROLLBACKS),
        )
        outcomes = self._database.rows(
            "SELECT detail FROM audit WHERE action IN (?, ?) ORDER BY id DESC LIMIT ?",
            (*ROLLBACK_OUTCOMES, 2 * RECENT_ROLLBACKS),
        )
        ended = {json.loads(row["detail"]).get("run") for row in outcomes}
        unfinished = []
        for row in reversed(started):
            detail = json.loads(row["detail"])
            if detail.get("run") and detail["run"] not in ended:
                unfinished.append({"at": row["at"], "actor": row["actor"], "detail": detail})
        return unfinished
