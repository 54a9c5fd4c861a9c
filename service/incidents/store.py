"""Incidents grouped by fingerprint, with a lifecycle (open → acknowledged → mitigated →
resolved, reopened when a resolved failure recurs), an audit timeline, and the raw error
span records kept (bounded) so rules can be replayed.

One store over either engine (``sql.Database``): its own SQLite file, or PostgreSQL shared
by every replica (``incident_pg.PgIncidentStore`` opens it there and adds the fleet-wide
action claims). Thread-safe: the worker thread writes while the event loop reads. A status
change locks its incident's row for the read-check-write, so two replicas resolving at once
give one resolution and one IllegalTransition; batches are written by ``incident_writes``.
What the engines share beyond SQL is in ``incident_lifecycle`` and ``incident_merge``.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.incidents.lifecycle import change_status, in_filters
from service.incidents.merge import group_by_fingerprint, new_incident_id
from service.incidents.model import (
    ACTIVE_STATUSES,
    OPENED,
    REOPENED,
    SEVERITIES,
    STATUSES,
    TIMELINE_KINDS,
    UPDATED,
    IllegalTransition,
    Incident,
    IncidentNotFound,
    IncidentStoreUnavailable,
    TimelineEntry,
    UnknownTimelineKind,
)
from service.incidents.writes import (
    GroupOutcome,
    StoredSpanRecord,
    first_sent,
    forget_sent,
    insert_timeline,
    keep_span_records,
    read_span_records,
    write_groups,
)
from service.stores.sql import Database, SqliteDatabase
from telemetry.classifier import Classification
from telemetry.sink import Sent
from telemetry.span_record import SpanRecord

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL UNIQUE, status TEXT NOT NULL,
    severity TEXT NOT NULL, type TEXT NOT NULL, impact TEXT NOT NULL,
    recoverable INTEGER NOT NULL, protocol TEXT, rule TEXT NOT NULL, component TEXT NOT NULL,
    source_service TEXT NOT NULL, span_name TEXT NOT NULL, exception_type TEXT NOT NULL,
    message TEXT NOT NULL, count INTEGER NOT NULL, reopen_count INTEGER NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, opened_at REAL NOT NULL,
    acknowledged_at REAL, mitigated_at REAL, resolved_at REAL, recovery_time_s REAL,
    trace_ids TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_status ON incidents (status, severity);
CREATE INDEX IF NOT EXISTS incidents_last_seen ON incidents (last_seen);
CREATE TABLE IF NOT EXISTS timeline (
    seq INTEGER PRIMARY KEY, incident_id TEXT NOT NULL, at REAL NOT NULL, kind TEXT NOT NULL,
    actor TEXT NOT NULL, message TEXT NOT NULL, data TEXT
);
CREATE INDEX IF NOT EXISTS timeline_incident ON timeline (incident_id, seq);
CREATE TABLE IF NOT EXISTS span_records (
    seq INTEGER PRIMARY KEY, at REAL NOT NULL, incident_id TEXT NOT NULL,
    classification TEXT NOT NULL, record TEXT NOT NULL, weight INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sent_batches (id INTEGER PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS write_probe (v TEXT NOT NULL);
"""


@dataclass(frozen=True)
class IncidentOptions:
    """How failures are grouped into incidents, and when a quiet incident resolves itself."""

    max_trace_ids: int = 20
    max_span_records: int = 10_000
    # Per incident per batch: see ``incident_merge.span_record_rows``.
    records_per_incident: int = 5
    quiet_period_s: float = 300.0
    # E.g. "its breaker is closed": gates auto-resolve; without it the quiet period decides.
    is_component_healthy: Callable[[str], bool] | None = None
    clock: Callable[[], float] = time.time


class IncidentStore:
    def __init__(self, path: str | Path | Database, **options: Any) -> None:
        """``path``: the SQLite file (created when missing), or an open database with the
        incidents tables; ``options`` as ``IncidentOptions`` takes them."""
        self.options = IncidentOptions(**options)
        if isinstance(path, str | Path):
            self.path = Path(path)
            path = SqliteDatabase(self.path, SQLITE_SCHEMA, IncidentStoreUnavailable)
        self._database: Database = path
        self._dialect = path.dialect
        self._sent_forgotten_at = 0.0  # when old keys of sent requests were last deleted

    @property
    def database(self) -> Database:
        """The database the store is on, which the alert ledger and the audit trail share."""
        return self._database

    def close(self) -> None:
        self._database.close()

    def probe_writable(self) -> None:
        """Write, read back and delete a probe row, as the health check does for each
        component's store: failures handed to a store that cannot be written are lost.
        Raises IncidentStoreUnavailable when it cannot."""
        with self._database.transaction() as db:
            db.execute("INSERT INTO write_probe (v) VALUES ('probe')")
            row = db.execute("SELECT count(*) AS n FROM write_probe").fetchone()
            if row is None or row["n"] < 1:
                raise IncidentStoreUnavailable("the probe row written was not read back")
            db.execute("DELETE FROM write_probe")

    def record_error(
        self, record: SpanRecord, classification: Classification
    ) -> tuple[Incident, str]:
        """Group one failure into its incident; the second value is ``opened``,
        ``reopened`` or ``updated``."""
        outcome = self.record_errors([(record, classification)])[0]
        return outcome.incident, outcome.outcome

    def record_errors(
        self, items: Sequence[tuple[SpanRecord, Classification]], sent: Sent = ()
    ) -> list[GroupOutcome]:
        """Many failures in one transaction: one row write per fingerprint, not per failure.
        ``sent``: other services' spans by request (``telemetry.sink.Sent``);
        one sent again (its answer lost to a restart, a timeout, another replica) is not
        counted again."""
        if not items and not sent:
            return []
        now, options = self.options.clock(), self.options
        with self._database.transaction() as db:
            if sent:
                if now >= self._sent_forgotten_at + 60:
                    forget_sent(db, now)
                    self._sent_forgotten_at = now
                items = [*items, *first_sent(db, sent, now)]
                if not items:
                    return []
            groups = group_by_fingerprint(items)
            outcomes = write_groups(
                db, self._dialect, groups, now, options.max_trace_ids, new_incident_id
            )
            per_incident = options.records_per_incident
            keep_span_records(db, outcomes, groups, now, options.max_span_records, per_incident)
        return outcomes

    def acknowledge(self, incident_id: str, who: str, note: str = "") -> Incident:
        """Someone is on it: any unresolved incident, also one the responder mitigated
        already (it stays mitigated; the timeline says who acknowledged it)."""
        return self._transition(incident_id, "acknowledged", who, note, ACTIVE_STATUSES)

    def mitigate(self, incident_id: str, who: str, note: str = "") -> Incident:
        return self._transition(incident_id, "mitigated", who, note, ("open", "acknowledged"))

    def resolve(self, incident_id: str, who: str, resolution: str = "") -> Incident:
        return self._transition(incident_id, "resolved", who, resolution, ACTIVE_STATUSES)

    def auto_resolve(
        self, now: float | None = None, held: Callable[[Incident], bool] | None = None
    ) -> builtins.list[Incident]:
        """Resolve active incidents quiet for ``quiet_period_s`` whose component is healthy
        again, but those ``held`` open (an alert that opened one still fires); the service
        calls this periodically."""
        now = self.options.clock() if now is None else now
        quiet_since = now - self.options.quiet_period_s
        candidates, _ = self.list(status="active", limit=1_000_000)
        resolved = []
        for incident in candidates:
            if incident.last_seen > quiet_since:
                continue
            healthy = self.options.is_component_healthy
            if healthy is not None and not healthy(incident.component):
                continue
            if held is not None and held(incident):
                continue
            note = (
                f"no new errors for {now - incident.last_seen:.0f} s and "
                f"{incident.component} is healthy"
            )
            try:
                resolved.append(
                    self._transition(
                        incident.id, "resolved", "auto-resolve", note, ACTIVE_STATUSES, now
                    )
                )
            except IllegalTransition:
                continue  # resolved by someone else meanwhile
        return resolved

    def add_timeline(
        self,
        incident_id: str,
        kind: str,
        message: str,
        actor: str,
        data: dict[str, Any] | None = None,
    ) -> TimelineEntry:
        if kind not in TIMELINE_KINDS:
            raise UnknownTimelineKind(kind)
        now, data = self.options.clock(), data or {}
        rows = self._database.rows(
            "INSERT INTO timeline (incident_id, at, kind, actor, message, data) "
            "SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM incidents WHERE id = ?) "
            "RETURNING seq",
            (incident_id, now, kind, actor, message, json.dumps(data, default=str), incident_id),
        )
        if not rows:
            raise IncidentNotFound(incident_id)
        return TimelineEntry(int(rows[0]["seq"]), incident_id, now, kind, actor, message, data)

    def stored_span_records(
        self, limit: int | None = None, incident_id: str | None = None
    ) -> list[StoredSpanRecord]:
        return read_span_records(self._database, limit, incident_id)

    # -- reading --------------------------------------------------------------------------

    def get(self, incident_id: str) -> Incident:
        rows = self._database.rows("SELECT * FROM incidents WHERE id = ?", (incident_id,))
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
            clause, values = self._dialect.any_of(column, values)
            clauses.append(clause)
            params.extend(values)
        if since is not None:
            clauses.append("last_seen >= ?")
            params.append(since)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        # The page and the count of all that match in one statement, so they agree: counted
        # apart, an incident written in between was listed beside a total of 0.
        # Ids compared byte by byte, whatever the database's collation.
        rows = [
            dict(row)
            for row in self._database.rows(
                f"SELECT *, COUNT(*) OVER () AS matching FROM incidents {where} "
                f"ORDER BY last_seen DESC, id{self._dialect.byte_order} LIMIT ? OFFSET ?",
                [*params, max(limit, 0), max(offset, 0)],
            )
        ]
        total = rows[0]["matching"] if rows else 0
        if not rows and offset > 0:  # a page past the end: the count alone
            counted = f"SELECT COUNT(*) AS n FROM incidents {where}"
            total = self._database.rows(counted, params)[0]["n"]
        for row in rows:
            del row["matching"]
        return [Incident.from_row(row) for row in rows], total

    def most_severe_active(
        self, at_least: str = "low", component: Sequence[str] | None = None
    ) -> Incident | None:
        """The newest active incident of the most severe severity any has, ``at_least`` or
        worse (of ``component`` when named). Asked severity by severity: a page of the
        newest active incidents may hold none of a critical one seen before them."""
        for severity in reversed(SEVERITIES[SEVERITIES.index(at_least) :]):
            found, _ = self.list(status="active", severity=severity, component=component, limit=1)
            if found:
                return found[0]
        return None

    def timeline(self, incident_id: str) -> builtins.list[TimelineEntry]:
        rows = self._database.rows(
            "SELECT * FROM timeline WHERE incident_id = ? ORDER BY seq", (incident_id,)
        )
        return [TimelineEntry.from_row(row) for row in rows]

    def active_counts_by_severity(self) -> dict[str, int]:
        return self._counts_by_severity(*self._dialect.any_of("status", ACTIVE_STATUSES))

    def counts_by_severity(self, since: float) -> dict[str, int]:
        return self._counts_by_severity("last_seen >= ?", [since])

    def _counts_by_severity(self, where: str, params: builtins.list[Any]) -> dict[str, int]:
        counts = dict.fromkeys(SEVERITIES, 0)
        rows = self._database.rows(
            f"SELECT severity, COUNT(*) AS n FROM incidents WHERE {where} GROUP BY severity",
            params,
        )
        counts.update({row["severity"]: row["n"] for row in rows})
        return counts

    def find_active(self, component: str, type: str | None = None) -> Incident | None:
        active, params = self._dialect.any_of("status", ACTIVE_STATUSES)
        clauses = ["component = ?", active]
        params = [component, *params]
        if type is not None:
            clauses.append("type = ?")
            params.append(type)
        rows = self._database.rows(
            f"SELECT * FROM incidents WHERE {' AND '.join(clauses)} "
            "ORDER BY last_seen DESC LIMIT 1",
            params,
        )
        return Incident.from_row(rows[0]) if rows else None

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
        now = self.options.clock() if now is None else now
        with self._database.transaction() as db:
            row = db.execute(
                f"SELECT * FROM incidents WHERE id = ?{self._dialect.lock_rows}", (incident_id,)
            ).fetchone()
            if row is None:
                raise IncidentNotFound(incident_id)
            incident = Incident.from_row(row)
            kind, message = change_status(incident, wanted, note, allowed_from, now)
            db.execute(
                f"UPDATE incidents SET status = ?, {wanted}_at = ?, recovery_time_s = ? "
                "WHERE id = ?",
                (
                    incident.status,
                    getattr(incident, f"{wanted}_at"),
                    incident.recovery_time_s,
                    incident_id,
                ),
            )
            insert_timeline(db, incident_id, now, kind, who, message)
        return incident


__all__ = [
    "OPENED",
    "REOPENED",
    "UPDATED",
    "GroupOutcome",
    "IllegalTransition",
    "Incident",
    "IncidentNotFound",
    "IncidentStore",
    "StoredSpanRecord",
    "TimelineEntry",
    "UnknownTimelineKind",
]
