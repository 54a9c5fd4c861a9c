"""The four component stores on PostgreSQL, one schema each, behaving as the SQLite ones.

Their migrations are append-only: to change a schema, add a tuple of statements at the end
of the component's ``migrations``; never edit one that has shipped.
"""

from __future__ import annotations

import time
from typing import Any

from psycopg.types.json import Jsonb

from service.stores.base import CategoryReport, ChatTurn, Profile
from service.stores.conversations import turn_from_row
from service.stores.postgres import PostgresStore
from service.stores.profiles import profile_from_row
from service.stores.unit_of_work import Unit
from service.stores.writes import AddExpense, SetBudgetLimit, UpdateProfile, current_month


def _probe_table(schema: str) -> str:
    return f"CREATE TABLE {schema}.write_probe (v TEXT NOT NULL)"


class PgConversationStore(PostgresStore):
    component = "conversations"
    schema = "ers_conversations"
    migrations = (
        (
            "CREATE SCHEMA IF NOT EXISTS ers_conversations",
            """CREATE TABLE ers_conversations.turns (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                user_id TEXT NOT NULL,
                message TEXT NOT NULL,
                response TEXT NOT NULL,
                agent TEXT NOT NULL,
                success BOOLEAN NOT NULL,
                degraded BOOLEAN NOT NULL,
                trace_id TEXT,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX turns_by_user ON ers_conversations.turns (user_id, id)",
            _probe_table("ers_conversations"),
        ),
        (
            # The replies to requests that carried an Idempotency-Key (see unit_of_work).
            """CREATE TABLE ers_conversations.idempotency_keys (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                scope TEXT NOT NULL,
                key TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                status INTEGER NOT NULL,
                body TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                UNIQUE (scope, key)
            )""",
            "CREATE INDEX idempotency_keys_by_age ON ers_conversations.idempotency_keys"
            " (created_at)",
        ),
    )

    async def record_turn(self, turn: ChatTurn) -> int:
        applied = await self.commit_unit(Unit(turn=turn))
        assert applied.turn_id is not None
        return applied.turn_id

    async def recent(self, user_id: str, limit: int = 20) -> list[ChatTurn]:
        rows = await self.fetch_all(
            "SELECT * FROM ers_conversations.turns WHERE user_id = %s ORDER BY id DESC LIMIT %s",
            (user_id, limit),
        )
        return [turn_from_row(row) for row in reversed(rows)]

    async def get_turn(self, turn_id: int) -> ChatTurn | None:
        row = await self.fetch_one(
            "SELECT * FROM ers_conversations.turns WHERE id = %s", (turn_id,)
        )
        return turn_from_row(row) if row is not None else None

    async def count(self) -> int:
        row = await self.fetch_one("SELECT count(*) AS n FROM ers_conversations.turns")
        return int(row["n"]) if row is not None else 0


class PgBudgetStore(PostgresStore):
    component = "budgets"
    schema = "ers_budgets"
    migrations = (
        (
            "CREATE SCHEMA IF NOT EXISTS ers_budgets",
            """CREATE TABLE ers_budgets.budgets (
                user_id TEXT NOT NULL,
                category TEXT NOT NULL,
                limit_cents BIGINT NOT NULL CHECK (limit_cents >= 0),
                updated_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (user_id, category)
            )""",
            """CREATE TABLE ers_budgets.expenses (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                user_id TEXT NOT NULL,
                category TEXT NOT NULL,
                amount_cents BIGINT NOT NULL CHECK (amount_cents > 0),
                note TEXT NOT NULL DEFAULT '',
                month TEXT NOT NULL,
                spent_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX expenses_by_month ON ers_budgets.expenses (user_id, month, category)",
            _probe_table("ers_budgets"),
        ),
        (
            # The chat turn an expense was recorded in: applying a turn again adds it once.
            "ALTER TABLE ers_budgets.expenses ADD COLUMN turn_key TEXT",
            "CREATE UNIQUE INDEX expenses_by_turn ON ers_budgets.expenses (turn_key)",
        ),
    )

    async def set_limit(self, user_id: str, category: str, limit_cents: int) -> None:
        await self.commit_writes(SetBudgetLimit(user_id, category, limit_cents))

    async def add_expense(
        self, user_id: str, category: str, amount_cents: int, note: str = ""
    ) -> None:
        await self.commit_writes(AddExpense(user_id, category, amount_cents, note))

    async def report(self, user_id: str, month: str | None = None) -> list[CategoryReport]:
        month = month or current_month()
        rows = await self.fetch_all(
            """SELECT category, max(limit_cents) AS limit_cents, sum(spent)::BIGINT AS spent
               FROM (
                   SELECT category, limit_cents, 0::BIGINT AS spent FROM ers_budgets.budgets
                   WHERE user_id = %s
                   UNION ALL
                   SELECT category, NULL, amount_cents FROM ers_budgets.expenses
                   WHERE user_id = %s AND month = %s
               ) AS entries GROUP BY category ORDER BY category COLLATE "C" """,
            (user_id, user_id, month),
        )
        return [
            CategoryReport(row["category"], row["limit_cents"], int(row["spent"] or 0))
            for row in rows
        ]


class PgProfileStore(PostgresStore):
    component = "profiles"
    schema = "ers_profiles"
    migrations = (
        (
            "CREATE SCHEMA IF NOT EXISTS ers_profiles",
            """CREATE TABLE ers_profiles.profiles (
                user_id TEXT PRIMARY KEY,
                age INTEGER,
                weight_kg DOUBLE PRECISION,
                height_cm DOUBLE PRECISION,
                sex TEXT,
                activity TEXT,
                goal TEXT,
                level TEXT,
                equipment TEXT[] NOT NULL DEFAULT '{}',
                updated_at DOUBLE PRECISION NOT NULL
            )""",
            _probe_table("ers_profiles"),
        ),
    )

    async def get(self, user_id: str) -> Profile | None:
        row = await self.fetch_one(
            "SELECT * FROM ers_profiles.profiles WHERE user_id = %s", (user_id,)
        )
        return profile_from_row(row, row["equipment"]) if row is not None else None

    async def upsert(self, user_id: str, **fields: Any) -> Profile:
        """Set the given fields (None values are left as they were)."""
        await self.commit_writes(UpdateProfile.of(user_id, **fields))
        profile = await self.get(user_id)
        assert profile is not None
        return profile


class PgSystemStateStore(PostgresStore):
    component = "system_state"
    schema = "ers_system_state"
    migrations = (
        (
            "CREATE SCHEMA IF NOT EXISTS ers_system_state",
            """CREATE TABLE ers_system_state.state (
                key TEXT PRIMARY KEY,
                value JSONB NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL
            )""",
            _probe_table("ers_system_state"),
        ),
    )

    async def get(self, key: str) -> Any | None:
        row = await self.fetch_one(
            "SELECT value FROM ers_system_state.state WHERE key = %s", (key,)
        )
        return row["value"] if row is not None else None

    async def put(self, key: str, value: Any) -> None:
        await self.execute(
            "INSERT INTO ers_system_state.state (key, value, updated_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
            " updated_at = excluded.updated_at",
            (key, Jsonb(value), time.time()),
        )

    async def delete(self, key: str) -> None:
        await self.execute("DELETE FROM ers_system_state.state WHERE key = %s", (key,))

    async def items(self) -> dict[str, Any]:
        rows = await self.fetch_all("SELECT key, value FROM ers_system_state.state")
        return {row["key"]: row["value"] for row in rows}
