"""Incidents on PostgreSQL, shared by every ERS replica that uses the same server: the same
store as ``IncidentStore`` (same methods, values and errors), but the same fingerprint from
two replicas is one incident whose count is the sum of both.

Race-free across processes: batches lock each fingerprint's row (see
``incident_pg_writes``), and a status change locks its incident's row for the read-check-
write, so two replicas resolving at once give one resolution and one IllegalTransition.
Database failures raise ``IncidentStoreUnavailable`` naming the server without its password.

The store does not create its schema: the service runs ``MIGRATIONS`` as component
``COMPONENT`` through its versioned migrations (``service.stores.postgres_migrations``)
before constructing it; construction fails with a clear message when they have not run.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg.rows import DictRow

from telemetry.incident_lifecycle import IncidentStoreBase, change_status, in_filters
from telemetry.incident_merge import Group, GroupOutcome, StoredSpanRecord, new_incident_id
from telemetry.incident_model import (
    ACTIVE_STATUSES,
    SEVERITIES,
    STATUSES,
    Incident,
    IncidentNotFound,
    IncidentStoreUnavailable,
    TimelineEntry,
)
from telemetry.incident_pg_writes import (
    insert_timeline,
    keep_span_records,
    read_span_records,
    write_groups,
)
from telemetry.pg_pool import PgPool, server_location, valid_identifier

COMPONENT = "incidents"
SCHEMA = "ers_incidents"
TABLES = ("incidents", "timeline", "span_records", "action_claims")
# Claims older than this are deleted when a new one is taken.
CLAIMS_KEPT_S = 7 * 86_400


def incident_migrations(schema: str = SCHEMA) -> tuple[tuple[str, ...], ...]:
    """The schema's migrations, in order; append a tuple to change it, never edit one."""
    s = valid_identifier(schema)
    statuses = ", ".join(f"'{status}'" for status in STATUSES)
    return (
        (
            f"CREATE SCHEMA IF NOT EXISTS {s}",
            f"""CREATE TABLE {s}.incidents (
                id TEXT PRIMARY KEY,
                fingerprint TEXT NOT NULL UNIQUE,
                status TEXT NOT NULL CHECK (status IN ({statuses})),
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
            f"CREATE INDEX incidents_status ON {s}.incidents (status, severity)",
            f"CREATE INDEX incidents_last_seen ON {s}.incidents (last_seen)",
            f"CREATE INDEX incidents_component ON {s}.incidents (component, last_seen)",
            f"""CREATE TABLE {s}.timeline (
                seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                incident_id TEXT NOT NULL REFERENCES {s}.incidents (id),
                at DOUBLE PRECISION NOT NULL,
                kind TEXT NOT NULL,
                actor TEXT NOT NULL,
                message TEXT NOT NULL,
                data TEXT
            )""",
            f"CREATE INDEX timeline_incident ON {s}.timeline (incident_id, seq)",
            f"""CREATE TABLE {s}.span_records (
                seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                at DOUBLE PRECISION NOT NULL,
                incident_id TEXT NOT NULL,
                classification TEXT NOT NULL,
                record TEXT NOT NULL,
                weight INTEGER NOT NULL
            )""",
            f"CREATE INDEX span_records_incident ON {s}.span_records (incident_id, seq)",
        ),
        (
            # One row per incident and fleet-wide action: the replica that runs it.
            f"""CREATE TABLE {s}.action_claims (
                incident_id TEXT NOT NULL,
                action TEXT NOT NULL,
                replica TEXT NOT NULL,
                claimed_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (incident_id, action)
            )""",
            f"CREATE INDEX action_claims_claimed_at ON {s}.action_claims (claimed_at)",
        ),
    )


MIGRATIONS = incident_migrations()


class PgIncidentStore(IncidentStoreBase):
    def __init__(
        self,
        url: str,
        schema: str = SCHEMA,
        *,
        max_trace_ids: int = 20,
        max_span_records: int = 10_000,
        records_per_incident: int = 5,
        quiet_period_s: float = 300.0,
        is_component_healthy: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Opens a small connection pool to ``url`` (a migrated database); raises
        IncidentStoreUnavailable when the server can't be used or the schema is missing."""
        super().__init__(
            max_trace_ids=max_trace_ids,
            max_span_records=max_span_records,
            records_per_incident=records_per_incident,
            quiet_period_s=quiet_period_s,
            is_component_healthy=is_component_healthy,
            clock=clock,
        )
        self.schema = valid_identifier(schema)
        self.location = server_location(url)
        self._pool = PgPool(
            url,
            name="ers-incidents",
            unavailable=IncidentStoreUnavailable,
            verify=self._check_schema,
        )

    def _check_schema(self, cursor: psycopg.Cursor[DictRow]) -> None:
        names = [f"{self.schema}.{table}" for table in TABLES]
        cursor.execute(
            "SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NULL",
            (names,),
        )
        missing = [row["name"] for row in cursor.fetchall()]
        if missing:
            raise IncidentStoreUnavailable(
                f"{', '.join(missing)} missing in the database at {self.location}; run the "
                f"PostgreSQL migrations (component {COMPONENT!r}) before opening the store"
            )

    def close(self) -> None:
        self._pool.close()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[DictRow]:
        with self._pool.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()

    # -- recording failures ---------------------------------------------------------------

    def _write_batch(
        self, groups: dict[str, Group], now: float, keep_records: bool
    ) -> list[GroupOutcome]:
        with self._pool.cursor(transaction=True) as cursor:
            outcomes = write_groups(
                cursor, self.schema, groups, now, self.max_trace_ids, new_incident_id
            )
            if keep_records:
                keep_span_records(
                    cursor,
                    self.schema,
                    outcomes,
                    groups,
                    now,
                    self.max_span_records,
                    self.records_per_incident,
                )
        return outcomes

    def stored_span_records(
        self, limit: int | None = None, incident_id: str | None = None
    ) -> list[StoredSpanRecord]:
        with self._pool.cursor() as cursor:
            return read_span_records(cursor, self.schema, limit, incident_id)

    # -- reading --------------------------------------------------------------------------

    def get(self, incident_id: str) -> Incident:
        rows = self._rows(f"SELECT * FROM {self.schema}.incidents WHERE id = %s", (incident_id,))
        if not rows:
            raise IncidentNotFound(incident_id)
        return Incident.from_row(rows[0])

    def list(
        self,
        status: str | Sequence[str] | None = None,
        severity: str | Sequence[str] | None = None,
        component: str | Sequence[str] | None = None,
        since: float | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Incident], int]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, values in in_filters(status, severity, component):
            clauses.append(f"{column} = ANY(%s)")
            params.append(values)
        if since is not None:
            clauses.append("last_seen >= %s")
            params.append(since)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._pool.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) AS n FROM {self.schema}.incidents {where}", params)
            total = cursor.fetchall()[0]["n"]
            # Ids compared byte by byte, as SQLite does, whatever the database's collation.
            cursor.execute(
                f"SELECT * FROM {self.schema}.incidents {where} "
                'ORDER BY last_seen DESC, id COLLATE "C" LIMIT %s OFFSET %s',
                [*params, max(limit, 0), max(offset, 0)],
            )
            rows = cursor.fetchall()
        return [Incident.from_row(row) for row in rows], total

    def timeline(self, incident_id: str) -> builtins.list[TimelineEntry]:
        rows = self._rows(
            f"SELECT * FROM {self.schema}.timeline WHERE incident_id = %s ORDER BY seq",
            (incident_id,),
        )
        return [TimelineEntry.from_row(row) for row in rows]

    def active_counts_by_severity(self) -> dict[str, int]:
        return self._counts_by_severity("status = ANY(%s)", [list(ACTIVE_STATUSES)])

    def counts_by_severity(self, since: float) -> dict[str, int]:
        return self._counts_by_severity("last_seen >= %s", [since])

    def _counts_by_severity(self, where: str, params: builtins.list[Any]) -> dict[str, int]:
        counts = dict.fromkeys(SEVERITIES, 0)
        rows = self._rows(
            f"SELECT severity, COUNT(*) AS n FROM {self.schema}.incidents WHERE {where} "
            "GROUP BY severity",
            params,
        )
        counts.update({row["severity"]: row["n"] for row in rows})
        return counts

    def find_active(self, component: str, type: str | None = None) -> Incident | None:
        clauses = ["component = %s", "status = ANY(%s)"]
        params: list[Any] = [component, list(ACTIVE_STATUSES)]
        if type is not None:
            clauses.append("type = %s")
            params.append(type)
        rows = self._rows(
            f"SELECT * FROM {self.schema}.incidents WHERE {' AND '.join(clauses)} "
            "ORDER BY last_seen DESC LIMIT 1",
            params,
        )
        return Incident.from_row(rows[0]) if rows else None

    # -- fleet-wide actions ---------------------------------------------------------------

    def claim_action(
        self, incident_id: str, action: str, replica: str, cooldown_s: float
    ) -> str | None:
        """Take the incident's action for ``replica`` unless another replica took it within
        ``cooldown_s`` (by the server's clock): None when taken, else the holder's name."""
        s = self.schema
        with self._pool.cursor(transaction=True) as cursor:
            cursor.execute(
                f"INSERT INTO {s}.action_claims AS c (incident_id, action, replica, claimed_at) "
                "VALUES (%s, %s, %s, extract(epoch FROM clock_timestamp())) "
                "ON CONFLICT (incident_id, action) DO UPDATE "
                "SET replica = EXCLUDED.replica, claimed_at = EXCLUDED.claimed_at "
                "WHERE c.claimed_at < EXCLUDED.claimed_at - %s RETURNING replica",
                (incident_id, action, replica, cooldown_s),
            )
            if cursor.fetchone() is not None:
                cursor.execute(
                    f"DELETE FROM {s}.action_claims "
                    "WHERE claimed_at < extract(epoch FROM clock_timestamp()) - %s",
                    (max(CLAIMS_KEPT_S, cooldown_s),),
                )
                return None
            cursor.execute(
                f"SELECT replica FROM {s}.action_claims WHERE incident_id = %s AND action = %s",
                (incident_id, action),
            )
            row = cursor.fetchone()
        return str(row["replica"]) if row is not None else "another replica"

    # -- lifecycle ------------------------------------------------------------------------

    def _transition(
        self,
        incident_id: str,
        wanted: str,
        who: str,
        note: str,
        allowed_from: Sequence[str],
        now: float | None = None,
    ) -> Incident:
        if wanted not in STATUSES:
            raise ValueError(f"unknown status {wanted!r}")
        now = self.clock() if now is None else now
        with self._pool.cursor(transaction=True) as cursor:
            cursor.execute(
                f"SELECT * FROM {self.schema}.incidents WHERE id = %s FOR NO KEY UPDATE",
                (incident_id,),
            )
            row = cursor.fetchone()
            if row is None:
                raise IncidentNotFound(incident_id)
            incident = Incident.from_row(row)
            kind, message = change_status(incident, wanted, note, allowed_from, now)
            cursor.execute(
                f"UPDATE {self.schema}.incidents SET status = %s, {wanted}_at = %s, "
                "recovery_time_s = %s WHERE id = %s",
                (
                    incident.status,
                    getattr(incident, f"{wanted}_at"),
                    incident.recovery_time_s,
                    incident_id,
                ),
            )
            insert_timeline(cursor, self.schema, incident_id, now, kind, who, message, {})
        return incident

    def _add_timeline(
        self,
        incident_id: str,
        at: float,
        kind: str,
        actor: str,
        message: str,
        data: dict[str, Any],
    ) -> int:
        with self._pool.cursor() as cursor:
            try:
                return insert_timeline(
                    cursor, self.schema, incident_id, at, kind, actor, message, data
                )
            except psycopg.errors.ForeignKeyViolation:
                raise IncidentNotFound(incident_id) from None
