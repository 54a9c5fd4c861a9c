"""Small named values the service keeps across restarts: the breakers' isolations (forced
opens, disabled breakers) and the system state, written by ``resilience.state_keeper``."""

from __future__ import annotations

import time
from typing import Any

from service.stores.component import ComponentStore, probe_table


class SystemStateStore(ComponentStore):
    component = "system_state"
    # Values are JSON text in SQLite, JSONB in PostgreSQL (see dialect).
    sqlite_ddl = (
        """CREATE TABLE IF NOT EXISTS state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at REAL NOT NULL
        )""",
    )
    pg_migrations = (
        (
            "CREATE SCHEMA IF NOT EXISTS ers_system_state",
            """CREATE TABLE ers_system_state.state (
                key TEXT PRIMARY KEY,
                value JSONB NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL
            )""",
            probe_table("ers_system_state"),
        ),
    )

    async def get(self, key: str) -> Any | None:
        row = await self.db.fetch_one(f"SELECT value FROM {self.at}.state WHERE key = ?", (key,))
        return self.dialect.decode_json(row["value"]) if row is not None else None

    async def put(self, key: str, value: Any) -> None:
        await self.db.execute(
            f"INSERT INTO {self.at}.state (key, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
            " updated_at = excluded.updated_at",
            (key, self.dialect.encode_json(value), time.time()),
        )

    async def delete(self, key: str) -> None:
        await self.db.execute(f"DELETE FROM {self.at}.state WHERE key = ?", (key,))

    async def items(self) -> dict[str, Any]:
        rows = await self.db.fetch_all(f"SELECT key, value FROM {self.at}.state")
        return {row["key"]: self.dialect.decode_json(row["value"]) for row in rows}
