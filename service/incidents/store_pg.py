"""Incidents on PostgreSQL, shared by every ERS replica that uses the same server: the
``IncidentStore`` (same methods, values and errors, written once over both engines) on a
connection pool, where the same fingerprint from two replicas is one incident whose count is
the sum of both, plus the claims that let one replica run each fleet-wide action.

Database failures raise ``IncidentStoreUnavailable`` naming the server without its password.
The store does not create its schema: the service runs ``MIGRATIONS`` as component
``COMPONENT`` through its versioned migrations (``service.stores.postgres_migrations``)
before constructing it; construction fails with a clear message when they have not run.
"""

from __future__ import annotations

from typing import Any

from service.incidents.model import STATUSES, IncidentStoreUnavailable
from service.incidents.store import IncidentStore
from service.stores.pg_pool import PgPool
from service.stores.postgres_migrations import Migration
from service.stores.session_names import presence_name, session_alive

COMPONENT = "incidents"
SCHEMA = "ers_incidents"
TABLES = ("incidents", "timeline", "span_records", "action_claims", "sent_batches")
# Claims older than this are deleted when a new one is taken.
CLAIMS_KEPT_S = 7 * 86_400


_STATUSES = ", ".join(f"'{status}'" for status in STATUSES)
# The schema's migrations, in order; append a tuple to change it, never edit one.
MIGRATIONS: tuple[Migration, ...] = (
    (
        f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
        f"""CREATE TABLE {SCHEMA}.incidents (
            id TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL CHECK (status IN ({_STATUSES})),
            severity TEXT NOT NULL,
            type TEXT NOT NULL,
            impact TEXT NOT NULL,
            recoverable BOOLEAN NOT NULL,
            protocol TEXT,
            rule TEXT NOT NULL,
            component TEXT NOT NULL,
            source_service TEXT NOT NULL,
            span_name TEXT NOT NULL,
            exception_type TEXT NOT NULL,
            message TEXT NOT NULL,
            count BIGINT NOT NULL,
            reopen_count INTEGER NOT NULL,
            first_seen DOUBLE PRECISION NOT NULL,
            last_seen DOUBLE PRECISION NOT NULL,
            opened_at DOUBLE PRECISION NOT NULL,
            acknowledged_at DOUBLE PRECISION,
            mitigated_at DOUBLE PRECISION,
            resolved_at DOUBLE PRECISION,
            recovery_time_s DOUBLE PRECISION,
            trace_ids TEXT NOT NULL
        )""",
        f"CREATE INDEX incidents_status ON {SCHEMA}.incidents (status, severity)",
        f"CREATE INDEX incidents_last_seen ON {SCHEMA}.incidents (last_seen)",
        f"CREATE INDEX incidents_component ON {SCHEMA}.incidents (component, last_seen)",
        f"""CREATE TABLE {SCHEMA}.timeline (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            incident_id TEXT NOT NULL REFERENCES {SCHEMA}.incidents (id),
            at DOUBLE PRECISION NOT NULL,
            kind TEXT NOT NULL,
            actor TEXT NOT NULL,
            message TEXT NOT NULL,
            data TEXT
        )""",
        f"CREATE INDEX timeline_incident ON {SCHEMA}.timeline (incident_id, seq)",
        f"""CREATE TABLE {SCHEMA}.span_records (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at DOUBLE PRECISION NOT NULL,
            incident_id TEXT NOT NULL,
            classification TEXT NOT NULL,
            record TEXT NOT NULL,
            weight INTEGER NOT NULL
        )""",
        f"CREATE INDEX span_records_incident ON {SCHEMA}.span_records (incident_id, seq)",
    ),
    (
        # One row per incident and fleet-wide action: the replica that runs it.
        f"""CREATE TABLE {SCHEMA}.action_claims (
            incident_id TEXT NOT NULL,
            action TEXT NOT NULL,
            replica TEXT NOT NULL,
            claimed_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (incident_id, action)
        )""",
        f"CREATE INDEX action_claims_claimed_at ON {SCHEMA}.action_claims (claimed_at)",
    ),
    # The health check's write probe, as each component's schema has one.
    (f"CREATE TABLE {SCHEMA}.write_probe (v TEXT NOT NULL)",),
    # The keys of requests of spans other services sent, so that one sent again counts once.
    (
        f"""CREATE TABLE {SCHEMA}.sent_batches (
            id BIGINT PRIMARY KEY,
            at DOUBLE PRECISION NOT NULL
        )""",
        f"CREATE INDEX sent_batches_at ON {SCHEMA}.sent_batches (at)",
    ),
)


class PgIncidentStore(IncidentStore):
    def __init__(self, url: str, schema: str = SCHEMA, **options: Any) -> None:
        """Opens a small connection pool to ``url`` (a migrated database), with the options
        ``IncidentStore`` takes; raises IncidentStoreUnavailable when the server can't be
        used or the schema is missing."""
        pool = PgPool(
            url,
            name="ers-incidents",
            unavailable=IncidentStoreUnavailable,
            schema=schema,
            # the alert ledger's and the audit trail's tables too: they share the pool
            tables=(*TABLES, "alert_ledger", "audit"),
            component="incidents, alerts, audit",
        )
        super().__init__(pool, **options)

    def claim_action(
        self, incident_id: str, action: str, replica: str, cooldown_s: float
    ) -> str | None:
        """Take the incident's action for ``replica`` unless another replica took it within
        ``cooldown_s`` (by the server's clock): None when taken, else the holder's name."""
        with self._database.transaction() as db:
            taken = db.execute(
                "INSERT INTO action_claims AS c (incident_id, action, replica, claimed_at) "
                "VALUES (?, ?, ?, extract(epoch FROM clock_timestamp())) "
                "ON CONFLICT (incident_id, action) DO UPDATE "
                "SET replica = EXCLUDED.replica, claimed_at = EXCLUDED.claimed_at "
                "WHERE c.claimed_at < EXCLUDED.claimed_at - ? RETURNING replica",
                (incident_id, action, replica, cooldown_s),
            ).fetchone()
            if taken is not None:
                db.execute(
                    "DELETE FROM action_claims "
                    "WHERE claimed_at < extract(epoch FROM clock_timestamp()) - ?",
                    (max(CLAIMS_KEPT_S, cooldown_s),),
                )
                return None
            row = db.execute(
                "SELECT replica FROM action_claims WHERE incident_id = ? AND action = ?",
                (incident_id, action),
            ).fetchone()
            if row is None:
                return "another replica"
            holder = str(row["replica"])
            # A holder that is gone (killed mid-action) never finishes: its claim is taken
            # over, one taker winning, instead of holding the action back for the cooldown.
            alive = db.execute(
                f"SELECT {session_alive('?')} AS alive", (presence_name(holder),)
            ).fetchone()
            if not alive["alive"]:
                taken = db.execute(
                    "UPDATE action_claims SET replica = ?,"
                    " claimed_at = extract(epoch FROM clock_timestamp())"
                    " WHERE incident_id = ? AND action = ? AND replica = ? RETURNING replica",
                    (replica, incident_id, action, holder),
                ).fetchone()
                if taken is not None:
                    return None
        return holder

    def release_action(self, incident_id: str, action: str, replica: str) -> None:
        """Give back ``replica``'s claim of the incident's action (it failed), so that the
        next attempt, on any replica, may take it; another replica's claim is left."""
        with self._database.transaction() as db:
            db.execute(
                "DELETE FROM action_claims WHERE incident_id = ? AND action = ? AND replica = ?",
                (incident_id, action, replica),
            )
