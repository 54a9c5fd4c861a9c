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
    # The half-open trial lease: which replica may run the trial call of a breaker that
    # leaves a fleet-wide forced open, until when; and whether a trial closed it.
    (
        """ALTER TABLE ers_fleet.overrides
            ADD COLUMN trial_passed BOOLEAN NOT NULL DEFAULT false,
            ADD COLUMN lease_holder TEXT,
            ADD COLUMN lease_until TIMESTAMPTZ""",
    ),
    # The incident a forced open isolates the agent for (the responder's, an alert's).
    ("ALTER TABLE ers_fleet.overrides ADD COLUMN incident TEXT",),
    # A breaker an operator disabled (every call let through), on every replica.
    ("ALTER TABLE ers_fleet.overrides ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT false",),
    # Stamps replicas leave each other (service.fleet.stamps).
    (
        """CREATE TABLE ers_fleet.stamps (
            key TEXT PRIMARY KEY,
            value JSONB NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )""",
    ),
    # When the agent's forced open began: a renewal moves updated_at, not the opening.
    ("ALTER TABLE ers_fleet.overrides ADD COLUMN forced_since TIMESTAMPTZ",),
)

# A forced open starts a new round of trials, so it clears the lease, and so does a trial
# that closed the breaker; a release keeps the lease its own replica may have taken already.
# A renewal keeps forced_since; a forcing after an expired one (whose row stays forced: an
# expiry is not written) is a new opening.
UPSERT = """INSERT INTO ers_fleet.overrides AS o
    (agent, forced, source, reason, until, replica, trial_passed, incident, disabled,
     forced_since)
VALUES (%(agent)s, %(forced)s, %(source)s, %(reason)s,
        now() + make_interval(secs => %(ttl_s)s::float8), %(replica)s, %(trial_passed)s,
        %(incident)s, %(disabled)s, CASE WHEN %(forced)s THEN now() END)
ON CONFLICT (agent) DO UPDATE SET forced = EXCLUDED.forced, source = EXCLUDED.source,
    reason = EXCLUDED.reason, until = EXCLUDED.until, replica = EXCLUDED.replica,
    trial_passed = EXCLUDED.trial_passed, incident = EXCLUDED.incident,
    disabled = EXCLUDED.disabled,
    forced_since = CASE WHEN NOT EXCLUDED.forced THEN NULL
        WHEN o.forced AND (o.until IS NULL OR o.until > now())
        THEN coalesce(o.forced_since, o.updated_at) ELSE now() END,
    lease_holder = CASE WHEN EXCLUDED.forced OR EXCLUDED.trial_passed
        THEN NULL ELSE o.lease_holder END,
    lease_until = CASE WHEN EXCLUDED.forced OR EXCLUDED.trial_passed
        THEN NULL ELSE o.lease_until END,
    updated_at = now(), version = o.version + 1
RETURNING version"""

# Take (or extend) the trial lease of an agent: granted when nobody holds it, it lapsed, or
# this replica holds it already. No row: nothing fleet-wide to coordinate.
CLAIM_LEASE = """UPDATE ers_fleet.overrides
SET lease_holder = %(replica)s, lease_until = now() + make_interval(secs => %(ttl_s)s::float8)
WHERE agent = %(agent)s
    AND (lease_until IS NULL OR lease_until <= now() OR lease_holder = %(replica)s)
RETURNING version"""
HAS_ROW = "SELECT 1 FROM ers_fleet.overrides WHERE agent = %(agent)s"

# The time left is computed by the server, so replicas' clocks need not agree.
READ = """SELECT agent, forced, source, reason, replica, version, trial_passed, incident, disabled,
    extract(epoch FROM until - now())::float8 AS remaining_s,
    extract(epoch FROM coalesce(forced_since, updated_at))::float8 AS since
FROM ers_fleet.overrides"""
