"""Every chat turn, as it was answered, and the replies remembered for Idempotency-Keys."""

from __future__ import annotations

from service.stores.component import ComponentStore, probe_table

# The replies to requests that carried an Idempotency-Key (see unit_of_work).
_KEYS = """CREATE TABLE {if_new}{at}.idempotency_keys (
    id {id},
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_at {real} NOT NULL,
    UNIQUE (scope, key)
)"""


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
            if_new="IF NOT EXISTS ", at="main", id="INTEGER PRIMARY KEY AUTOINCREMENT", real="REAL"
        ),
        "CREATE INDEX IF NOT EXISTS idempotency_keys_by_age ON idempotency_keys (created_at)",
    )
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
            ),
            "CREATE INDEX idempotency_keys_by_age ON ers_conversations.idempotency_keys"
            " (created_at)",
        ),
    )
