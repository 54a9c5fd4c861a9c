"""Small named values the service keeps across restarts: the breakers' isolations (forced
opens, disabled breakers) and the system state, written by ``resilience.state_keeper``."""

from __future__ import annotations

import json
import time
from typing import Any

from service.stores.sqlite import SqliteStore


class SystemStateStore(SqliteStore):
    component = "system_state"
    schema = (
        """CREATE TABLE IF NOT EXISTS state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at REAL NOT NULL
        )""",
    )

    async def get(self, key: str) -> Any | None:
        row = self.query_one("SELECT value FROM state WHERE key = ?", (key,))
        return json.loads(row["value"]) if row is not None else None

    async def put(self, key: str, value: Any) -> None:
        self.execute(
            "INSERT INTO state (key, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
            " updated_at = excluded.updated_at",
            (key, json.dumps(value), time.time()),
        )

    async def delete(self, key: str) -> None:
        self.execute("DELETE FROM state WHERE key = ?", (key,))

    async def items(self) -> dict[str, Any]:
        return {row["key"]: json.loads(row["value"]) for row in self.query("SELECT * FROM state")}
