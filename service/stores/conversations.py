"""Every chat turn, as it was answered."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from service.stores.base import ChatTurn
from service.stores.sqlite import SqliteStore
from service.stores.unit_of_work import Unit


class ConversationStore(SqliteStore):
    component = "conversations"
    schema = (
        """CREATE TABLE IF NOT EXISTS turns (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id TEXT NOT NULL,
            message TEXT NOT NULL,
            response TEXT NOT NULL,
            agent TEXT NOT NULL,
            success INTEGER NOT NULL,
            degraded INTEGER NOT NULL,
            trace_id TEXT,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS turns_by_user ON turns (user_id, id)",
        # The replies to requests that carried an Idempotency-Key (see unit_of_work).
        """CREATE TABLE IF NOT EXISTS idempotency_keys (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            scope TEXT NOT NULL,
            key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            status INTEGER NOT NULL,
            body TEXT NOT NULL,
            created_at REAL NOT NULL,
            UNIQUE (scope, key)
        )""",
        "CREATE INDEX IF NOT EXISTS idempotency_keys_by_age ON idempotency_keys (created_at)",
    )

    async def record_turn(self, turn: ChatTurn) -> int:
        applied = await self.commit_unit(Unit(turn=turn))
        assert applied.turn_id is not None
        return applied.turn_id

    async def recent(self, user_id: str, limit: int = 20) -> list[ChatTurn]:
        rows = self.query(
            "SELECT * FROM turns WHERE user_id = ? ORDER BY id DESC LIMIT ?", (user_id, limit)
        )
        return [turn_from_row(row) for row in reversed(rows)]

    async def get_turn(self, turn_id: int) -> ChatTurn | None:
        row = self.query_one("SELECT * FROM turns WHERE id = ?", (turn_id,))
        return turn_from_row(row) if row is not None else None

    async def count(self) -> int:
        row = self.query_one("SELECT count(*) AS n FROM turns")
        return int(row["n"]) if row is not None else 0


def turn_from_row(row: sqlite3.Row | Mapping[str, Any]) -> ChatTurn:
    """A turn from a ``turns`` row of either backend."""
    return ChatTurn(
        id=row["id"],
        user_id=row["user_id"],
        message=row["message"],
        response=row["response"],
        agent=row["agent"],
        success=bool(row["success"]),
        degraded=bool(row["degraded"]),
        trace_id=row["trace_id"],
        created_at=row["created_at"],
    )
