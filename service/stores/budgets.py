"""Monthly budgets per category and the expenses recorded against them, in cents."""

from __future__ import annotations

import sqlite3

from service.stores.base import CategoryReport
from service.stores.component import ComponentStore, probe_table
from service.stores.writes import current_month

_BUDGETS = """CREATE TABLE {if_new}{at}budgets (
    user_id TEXT NOT NULL,
    category TEXT NOT NULL,
    limit_cents {int} NOT NULL CHECK (limit_cents >= 0),
    updated_at {real} NOT NULL,
    PRIMARY KEY (user_id, category)
)"""
_EXPENSES = """CREATE TABLE {if_new}{at}expenses (
    id {id},
    user_id TEXT NOT NULL,
    category TEXT NOT NULL,
    amount_cents {int} NOT NULL CHECK (amount_cents > 0),
    note TEXT NOT NULL DEFAULT '',
    month TEXT NOT NULL,
    spent_at {real} NOT NULL{turn_key}
)"""
_SQLITE = {"if_new": "IF NOT EXISTS ", "at": "", "int": "INTEGER", "real": "REAL"}
_PG = {"if_new": "", "at": "ers_budgets.", "int": "BIGINT", "real": "DOUBLE PRECISION"}


def _upgrade(conn: sqlite3.Connection) -> None:
    # The chat turn an expense was recorded in: applying a turn again adds it once.
    columns = {row[1] for row in conn.execute("PRAGMA table_info(expenses)")}
    if "turn_key" not in columns:
        conn.execute("ALTER TABLE expenses ADD COLUMN turn_key TEXT")
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS expenses_by_turn ON expenses (turn_key)")


class BudgetStore(ComponentStore):
    component = "budgets"
    sqlite_ddl = (
        _BUDGETS.format(**_SQLITE),
        _EXPENSES.format(
            **_SQLITE, id="INTEGER PRIMARY KEY AUTOINCREMENT", turn_key=",\n    turn_key TEXT"
        ),
        "CREATE INDEX IF NOT EXISTS expenses_by_month ON expenses (user_id, month, category)",
    )
    sqlite_upgrade = staticmethod(_upgrade)
    pg_migrations = (
        (
            "CREATE SCHEMA IF NOT EXISTS ers_budgets",
            _BUDGETS.format(**_PG),
            _EXPENSES.format(
                **_PG, id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", turn_key=""
            ),
            "CREATE INDEX expenses_by_month ON ers_budgets.expenses (user_id, month, category)",
            probe_table("ers_budgets"),
        ),
        (
            # The chat turn an expense was recorded in: applying a turn again adds it once.
            "ALTER TABLE ers_budgets.expenses ADD COLUMN turn_key TEXT",
            "CREATE UNIQUE INDEX expenses_by_turn ON ers_budgets.expenses (turn_key)",
        ),
    )
    pg_after_restore = (
        "ALTER TABLE ers_budgets.expenses ADD COLUMN IF NOT EXISTS turn_key TEXT",
        "CREATE UNIQUE INDEX IF NOT EXISTS expenses_by_turn ON ers_budgets.expenses (turn_key)",
    )

    async def report(self, user_id: str, month: str | None = None) -> list[CategoryReport]:
        rows = await self.db.fetch_all(
            f"""SELECT category, max(limit_cents) AS limit_cents,
                   CAST(sum(spent) AS BIGINT) AS spent FROM (
                   SELECT category, limit_cents, CAST(0 AS BIGINT) AS spent
                   FROM {self.at}.budgets WHERE user_id = ?
                   UNION ALL
                   SELECT category, NULL, amount_cents FROM {self.at}.expenses
                   WHERE user_id = ? AND month = ?
               ) AS entries GROUP BY category ORDER BY category{self.dialect.byte_order}""",
            (user_id, user_id, month or current_month()),
        )
        return [
            CategoryReport(row["category"], row["limit_cents"], int(row["spent"] or 0))
            for row in rows
        ]
