"""Every chat turn, as it was answered, and the replies remembered for Idempotency-Keys."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable

from service.stores.component import ComponentStore, probe_table

log = logging.getLogger("ers.stores")

# The replies to requests that carried an Idempotency-Key (see unit_of_work).
_KEYS = """CREATE TABLE {if_new}{at}.idempotency_keys (
    id {id},
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_at {real} NOT NULL,{wrote}
    UNIQUE (scope, key)
)"""
# The stores a keyed request wrote, as ",budgets,profiles,"; NULL in rows of older releases.
_WROTE = "\n    wrote TEXT,"


def _upgrade(conn: sqlite3.Connection) -> None:
    columns = {row[1] for row in conn.execute("PRAGMA table_info(idempotency_keys)")}
    if "wrote" not in columns:
        conn.execute("ALTER TABLE idempotency_keys ADD COLUMN wrote TEXT")


# Per component rolled back, the stores whose writes the replies forgotten then wrote to.
FORGOTTEN_AT_ROLLBACK_OF = {
    "budgets": ("budgets",),
    "profiles": ("profiles",),
    "conversations": ("budgets", "profiles"),
}


def not_forgotten(components: str, exc: Exception) -> str:
    return (
        f"the replies remembered for Idempotency-Keys that wrote to {components} could not be "
        f"forgotten ({exc}): a retry of such a request within idempotency_key_ttl_s gets its "
        "first reply again, which may tell of a write the rollback put aside"
    )


class ConversationStore(ComponentStore):
    component = "conversations"
    sqlite_ddl = (
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
        _KEYS.format(
            if_new="IF NOT EXISTS ",
            at="main",
            id="INTEGER PRIMARY KEY AUTOINCREMENT",
            real="REAL",
            wrote=_WROTE,
        ),
        "CREATE INDEX IF NOT EXISTS idempotency_keys_by_age ON idempotency_keys (created_at)",
    )
    sqlite_upgrade = staticmethod(_upgrade)
    pg_migrations = (
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
            probe_table("ers_conversations"),
        ),
        (
            _KEYS.format(
                if_new="",
                at="ers_conversations",
                id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
                real="DOUBLE PRECISION",
                wrote="",
            ),
            "CREATE INDEX idempotency_keys_by_age ON ers_conversations.idempotency_keys"
            " (created_at)",
        ),
        ("ALTER TABLE ers_conversations.idempotency_keys ADD COLUMN wrote TEXT",),
    )
    pg_after_restore = (
        "ALTER TABLE ers_conversations.idempotency_keys ADD COLUMN IF NOT EXISTS wrote TEXT",
    )

    def replies_forgetting(self, component: str) -> Callable[[], Awaitable[list[str]]]:
        """What forgets, after a rollback of ``component``, the remembered replies that may
        tell of writes the stores no longer hold ("Recorded $25.00" for an expense put
        aside): those of keyed requests that wrote to budgets or profiles, when either is
        rolled back; and when the conversations store is, all of them its snapshot brought
        back (budgets may have been rolled back since they were taken). A retry of one runs
        again and answers what is true now: its expense recorded anew, or a 409 where the
        store kept it."""
        wrote = FORGOTTEN_AT_ROLLBACK_OF[component]
        named = " or ".join(wrote)
        which = " OR ".join("wrote LIKE ?" for _ in wrote)

        async def forget() -> list[str]:
            try:
                gone = await self.db.fetch_all(
                    f"DELETE FROM {self.at}.idempotency_keys WHERE wrote IS NULL OR {which}"
                    " RETURNING id",
                    tuple(f"%,{name},%" for name in wrote),
                )
            except Exception as exc:
                log.exception("the replies that wrote to %s were not forgotten", named)
                return [not_forgotten(named, exc)]
            if not gone:
                return []
            return [
                f"replies remembered for Idempotency-Keys that wrote to {named} "
                f"forgotten: {len(gone)}"
            ]

        return forget
