"""Incidents in their own SQLite file: grouped by fingerprint, with a lifecycle
(open → acknowledged → mitigated → resolved, reopened when a resolved failure recurs), an
audit timeline, and the raw error span records kept (bounded) so rules can be replayed.

Thread-safe: the worker thread writes while the event loop reads (see ``incident_db``).
"""

from __future__ import annotations

import random
import string
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from telemetry.classifier import Classification
from telemetry.incident_db import IncidentDatabase, insert_timeline
from telemetry.incident_model import (
    ACTIVE_STATUSES,
    OPENED,
    REOPENED,
    SEVERITIES,
    TIMELINE_KINDS,
    UPDATED,
    IllegalTransition,
    Incident,
    IncidentNotFound,
    TimelineEntry,
    UnknownTimelineKind,
)
from telemetry.incident_writes import (
    GroupOutcome,
    StoredSpanRecord,
    group_by_fingerprint,
    keep_span_records,
    read_span_records,
    write_groups,
)
from telemetry.span_record import SpanRecord

ID_ALPHABET = string.ascii_lowercase + string.digits


def new_incident_id(now: float) -> str:
    return f"INC_{int(now * 1000)}_{''.join(random.choices(ID_ALPHABET, k=6))}"


class IncidentStore:
    def __init__(
        self,
        path: str | Path,
        *,
        max_trace_ids: int = 20,
        max_span_records: int = 10_000,
        records_per_incident: int = 5,
        quiet_period_s: float = 300.0,
        is_component_healthy: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``is_component_healthy`` (e.g. "its breaker is closed") gates auto-resolve; without
        it the quiet period alone decides."""
        self.path = Path(path)
        self.max_trace_ids = max_trace_ids
        self.max_span_records = max_span_records
        # Per incident per batch: see ``keep_span_records``.
        self.records_per_incident = records_per_incident
        self.quiet_period_s = quiet_period_s
        self.is_component_healthy = is_component_healthy
        self.clock = clock
        self._database = IncidentDatabase(self.path)
        self._db = self._database.reader
        self._write = self._database.transaction

    def close(self) -> None:
        self._database.close()

    # -- recording failures ---------------------------------------------------------------

    def record_error(
        self, record: SpanRecord, classification: Classification
    ) -> tuple[Incident, str]:
        """Group one failure into its incident; the second value is ``opened``,
        ``reopened`` or ``updated``."""
        outcome = self.record_errors([(record, classification)])[0]
        return outcome.incident, outcome.outcome

    def record_errors(
        self, items: Sequence[tuple[SpanRecord, Classification]], *, keep_records: bool = True
    ) -> list[GroupOutcome]:
        """Many failures in one transaction: one row write per fingerprint, not per failure."""
        if not items:
            return []
        now = self.clock()
        groups = group_by_fingerprint(items)
        with self._write() as db:
            outcomes = write_groups(db, groups, now, self.max_trace_ids, new_incident_id)
            if keep_records:
                keep_span_records(
                    db, outcomes, groups, now, self.max_span_records, self.records_per_incident
                )
        return outcomes

    def stored_span_records(
        self, limit: int | None = None, incident_id: str | None = None
    ) -> list[StoredSpanRecord]:
        """Stored error span records (newest ``limit``), oldest first, each with the
        classification it got and how many failures it stands for."""
        return read_span_records(self._db(), limit, incident_id)

    # -- reading --------------------------------------------------------------------------

    def get(self, incident_id: str) -> Incident:
        row = self._db().execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        if row is None:
            raise IncidentNotFound(incident_id)
        return Incident.from_row(row)

    def list(
        self,
        status: str | Sequence[str] | None = None,
        severity: str | Sequence[str] | None = None,
        component: str | Sequence[str] | None = None,
        since: float | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Incident], int]:
        """Newest activity first, and the total matching. ``status="active"`` means any
        status but resolved; ``since`` compares with ``last_seen``."""
        if status == "active":
            status = ACTIVE_STATUSES
        clauses: list[str] = []
        params: list[Any] = []
        for column, wanted in (("status", status), ("severity", severity)):
            _add_in(clauses, params, column, wanted)
        _add_in(clauses, params, "component", component)
        if since is not None:
            clauses.append("last_seen >= ?")
            params.append(since)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        db = self._db()
        total = db.execute(f"SELECT COUNT(*) FROM incidents {where}", params).fetchone()[0]
        rows = db.execute(
            f"SELECT * FROM incidents {where} ORDER BY last_seen DESC, id LIMIT ? OFFSET ?",
            [*params, max(limit, 0), max(offset, 0)],
        )
        return [Incident.from_row(row) for row in rows], total

    def timeline(self, incident_id: str) -> list[TimelineEntry]:
        rows = self._db().execute(
            "SELECT * FROM timeline WHERE incident_id = ? ORDER BY seq", (incident_id,)
        )
        return [TimelineEntry.from_row(row) for row in rows]

    def active_counts_by_severity(self) -> dict[str, int]:
        return self._counts_by_severity(
            f"status IN ({','.join('?' * len(ACTIVE_STATUSES))})", list(ACTIVE_STATUSES)
        )

    def counts_by_severity(self, since: float) -> dict[str, int]:
        """Incidents seen since ``since`` (epoch seconds), by severity, any status."""
        return self._counts_by_severity("last_seen >= ?", [since])

    def _counts_by_severity(self, where: str, params: list[Any]) -> dict[str, int]:
        counts = dict.fromkeys(SEVERITIES, 0)
        rows = self._db().execute(
            f"SELECT severity, COUNT(*) FROM incidents WHERE {where} GROUP BY severity", params
        )
        counts.update({severity: count for severity, count in rows})
        return counts

    def find_active(self, component: str, type: str | None = None) -> Incident | None:
        """The active incident of a component (and type) seen most recently, if any."""
        clauses = ["component = ?", f"status IN ({','.join('?' * len(ACTIVE_STATUSES))})"]
        params: list[Any] = [component, *ACTIVE_STATUSES]
        if type is not None:
            clauses.append("type = ?")
            params.append(type)
        row = (
            self._db()
            .execute(
                f"SELECT * FROM incidents WHERE {' AND '.join(clauses)} "
                "ORDER BY last_seen DESC LIMIT 1",
                params,
            )
            .fetchone()
        )
        return None if row is None else Incident.from_row(row)

    # -- lifecycle ------------------------------------------------------------------------

    def acknowledge(self, incident_id: str, who: str, note: str = "") -> Incident:
        return self._transition(incident_id, "acknowledged", who, note, ("open",))

    def mitigate(self, incident_id: str, who: str, note: str = "") -> Incident:
        return self._transition(incident_id, "mitigated", who, note, ("open", "acknowledged"))

    def resolve(self, incident_id: str, who: str, resolution: str = "") -> Incident:
        return self._transition(incident_id, "resolved", who, resolution, ACTIVE_STATUSES)

    def auto_resolve(self, now: float | None = None) -> list[Incident]:
        """Resolve active incidents quiet for ``quiet_period_s`` whose component is healthy
        again; the service calls this periodically."""
        now = self.clock() if now is None else now
        quiet_since = now - self.quiet_period_s
        candidates, _ = self.list(status="active", limit=1_000_000)
        resolved = []
        for incident in candidates:
            if incident.last_seen > quiet_since:
                continue
            healthy = self.is_component_healthy
            if healthy is not None and not healthy(incident.component):
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

    def _transition(
        self,
        incident_id: str,
        wanted: str,
        who: str,
        note: str,
        allowed_from: Sequence[str],
        now: float | None = None,
    ) -> Incident:
        now = self.clock() if now is None else now
        with self._write() as db:
            row = db.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
            if row is None:
                raise IncidentNotFound(incident_id)
            incident = Incident.from_row(row)
            if incident.status not in allowed_from:
                raise IllegalTransition(
                    incident_id, incident.status, wanted, _hint(incident.status, wanted)
                )
            previous = incident.status
            incident.status = wanted
            setattr(incident, f"{wanted}_at", now)
            if incident.recovery_time_s is None and wanted in ("mitigated", "resolved"):
                incident.recovery_time_s = max(now - incident.opened_at, 0.0)
            db.execute(
                f"UPDATE incidents SET status = ?, {wanted}_at = ?, recovery_time_s = ? "
                "WHERE id = ?",
                (wanted, now, incident.recovery_time_s, incident_id),
            )
            message = f"{previous} → {wanted}" + (f": {note}" if note else "")
            insert_timeline(db, incident_id, now, "status_changed", who, message, {})
        return incident

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
        now = self.clock()
        with self._write() as db:
            if (
                db.execute("SELECT 1 FROM incidents WHERE id = ?", (incident_id,)).fetchone()
                is None
            ):
                raise IncidentNotFound(incident_id)
            seq = insert_timeline(db, incident_id, now, kind, actor, message, data or {})
        return TimelineEntry(seq, incident_id, now, kind, actor, message, data or {})


def _add_in(
    clauses: list[str], params: list[Any], column: str, wanted: str | Sequence[str] | None
) -> None:
    if wanted is None:
        return
    values = [wanted] if isinstance(wanted, str) else list(wanted)
    clauses.append(f"{column} IN ({','.join('?' * len(values))})")
    params.extend(values)


def _hint(status: str, wanted: str) -> str:
    if status == "resolved":
        return "it reopens by itself when the error recurs"
    if status == wanted:
        return "nothing to do"
    return "the lifecycle is open → acknowledged → mitigated → resolved"


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
