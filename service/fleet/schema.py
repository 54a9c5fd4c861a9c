"""The ``ers_fleet`` schema: one row per agent with the fleet's override of its breaker,
and the statements that write and read it."""

from __future__ import annotations

from service.stores.postgres_migrations import Migration

CHANNEL = "ers_breaker_overrides"
COMPONENT = "fleet"
# Append-only, like every component's migrations: never edit one that has shipped.
MIGRATIONS: tuple[Migration, ...] = (
    (
        "CREATE SCHEMA IF NOT EXISTS ers_fleet",
        """CREATE TABLE ers_fleet.overrides (
            agent TEXT PRIMARY KEY,
            forced BOOLEAN NOT NULL,
            source TEXT,
            reason TEXT NOT NULL,
            until TIMESTAMPTZ,
            replica TEXT NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            version BIGINT NOT NULL DEFAULT 1
        )""",
    ),
)

UPSERT = """INSERT INTO ers_fleet.overrides AS o (agent, forced, source, reason, until, replica)
VALUES (%(agent)s, %(forced)s, %(source)s, %(reason)s,
        now() + make_interval(secs => %(ttl_s)s::float8), %(replica)s)
ON CONFLICT (agent) DO UPDATE SET forced = EXCLUDED.forced, source = EXCLUDED.source,
    reason = EXCLUDED.reason, until = EXCLUDED.until, replica = EXCLUDED.replica,
    updated_at = now(), version = o.version + 1
RETURNING version"""

# The time left is computed by the server, so replicas' clocks need not agree.
READ = """SELECT agent, forced, source, reason, replica, version,
    extract(epoch FROM until - now())::float8 AS remaining_s
FROM ers_fleet.overrides"""
