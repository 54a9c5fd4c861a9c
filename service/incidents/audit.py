"""The audit trail: who did what and why, in the incidents database (never rolled back)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from service.stores.sql import SqliteDatabase

SCHEMA = """CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
)"""


class AuditLog:
    def __init__(self, path: Path) -> None:
        self._database = SqliteDatabase(path, SCHEMA)

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
            {"at": at, "actor": actor, "action": action, "detail": json.loads(detail)}
            for at, actor, action, detail in rows
        ]

    def close(self) -> None:
        self._database.close()
