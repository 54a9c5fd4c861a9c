"""Monthly budgets per category and the expenses recorded against them, in cents."""

from __future__ import annotations

import sqlite3

from service.stores.base import CategoryReport
from service.stores.sqlite import SqliteStore
from service.stores.writes import AddExpense, SetBudgetLimit, current_month


class BudgetStore(SqliteStore):
    component = "budgets"
    schema = (
        """CREATE TABLE IF NOT EXISTS budgets (
            user_id TEXT NOT NULL,
            category TEXT NOT NULL,
            limit_cents INTEGER NOT NULL CHECK (limit_cents >= 0),
            updated_at REAL NOT NULL,
            PRIMARY KEY (user_id, category)
        )""",
        """CREATE TABLE IF NOT EXISTS expenses (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id TEXT NOT NULL,
            category TEXT NOT NULL,
            amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
            note TEXT NOT NULL DEFAULT '',
            month TEXT NOT NULL,
            spent_at REAL NOT NULL,
            turn_key TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS expenses_by_month ON expenses (user_id, month, category)",
    )

    def upgrade(self, conn: sqlite3.Connection) -> None:
        # The chat turn an expense was recorded in: applying a turn again adds it once.
        columns = {row[1] for row in conn.execute("PRAGMA table_info(expenses)")}
        if "turn_key" not in columns:
            conn.execute("ALTER TABLE expenses ADD COLUMN turn_key TEXT")
        conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS expenses_by_turn ON expenses (turn_key)")

    async def set_limit(self, user_id: str, category: str, limit_cents: int) -> None:
        await self.commit_writes(SetBudgetLimit(user_id, category, limit_cents))

    async def add_expense(
        self, user_id: str, category: str, amount_cents: int, note: str = ""
    ) -> None:
        await self.commit_writes(AddExpense(user_id, category, amount_cents, note))

    async def report(self, user_id: str, month: str | None = None) -> list[CategoryReport]:
        month = month or current_month()
        rows = self.query(
            """SELECT category, max(limit_cents) AS limit_cents, sum(spent) AS spent FROM (
                   SELECT category, limit_cents, 0 AS spent FROM budgets WHERE user_id = ?
                   UNION ALL
                   SELECT category, NULL, amount_cents FROM expenses
                   WHERE user_id = ? AND month = ?
               ) GROUP BY category ORDER BY category""",
            (user_id, user_id, month),
        )
        return [
            CategoryReport(row["category"], row["limit_cents"], int(row["spent"] or 0))
            for row in rows
        ]
