"""Incidents in their own SQLite file: grouped by fingerprint, with a lifecycle
(open → acknowledged → mitigated → resolved, reopened when a resolved failure recurs), an
audit timeline, and the raw error span records kept (bounded) so rules can be replayed.

Thread-safe: the worker thread writes while the event loop reads (see ``incident_db``).
The same store on PostgreSQL, shared by replicas, is ``incident_pg.PgIncidentStore``; what
both share is in ``incident_lifecycle`` and ``incident_merge``.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from telemetry.incident_db import IncidentDatabase, insert_timeline
from telemetry.incident_lifecycle import IncidentStoreBase, change_status, in_filters
from telemetry.incident_merge import Group, new_incident_id
from telemetry.incident_model import (
    ACTIVE_STATUSES,
    OPENED,
    REOPENED,
    SEVERITIES,
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
    keep_span_records,
    read_span_records,
    write_groups,
)


class IncidentStore(IncidentStoreBase):
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
        super().__init__(
            max_trace_ids=max_trace_ids,
            max_span_records=max_span_records,
            records_per_incident=records_per_incident,
            quiet_period_s=quiet_period_s,
            is_component_healthy=is_component_healthy,
            clock=clock,
        )
        self.path = Path(path)
        self._database = IncidentDatabase(self.path)
        self._db = self._database.reader
        self._write = self._database.transaction

    def close(self) -> None:
        self._database.close()

    # -- recording failures ---------------------------------------------------------------

    def _write_batch(
        self, groups: dict[str, Group], now: float, keep_records: bool
    ) -> list[GroupOutcome]:
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
        clauses: list[str] = []
        params: list[Any] = []
        for column, values in in_filters(status, severity, component):
            clauses.append(f"{column} IN ({','.join('?' * len(values))})")
            params.extend(values)
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

    def timeline(self, incident_id: str) -> builtins.list[TimelineEntry]:
        rows = self._db().execute(
            "SELECT * FROM timeline WHERE incident_id = ? ORDER BY seq", (incident_id,)
        )
        return [TimelineEntry.from_row(row) for row in rows]

    def active_counts_by_severity(self) -> dict[str, int]:
        return self._counts_by_severity(
            f"status IN ({','.join('?' * len(ACTIVE_STATUSES))})", list(ACTIVE_STATUSES)
        )

    def counts_by_severity(self, since: float) -> dict[str, int]:
        return self._counts_by_severity("last_seen >= ?", [since])

    def _counts_by_severity(self, where: str, params: builtins.list[Any]) -> dict[str, int]:
        counts = dict.fromkeys(SEVERITIES, 0)
        rows = self._db().execute(
            f"SELECT severity, COUNT(*) FROM incidents WHERE {where} GROUP BY severity", params
        )
        counts.update({severity: count for severity, count in rows})
        return counts

    def find_active(self, component: str, type: str | None = None) -> Incident | None:
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
            insert_timeline(db, incident_id, now, kind, who, message, {})
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
        with self._write() as db:
            if (
                db.execute("SELECT 1 FROM incidents WHERE id = ?", (incident_id,)).fetchone()
                is None
            ):
                raise IncidentNotFound(incident_id)
            return insert_timeline(db, incident_id, at, kind, actor, message, data)


__all__ = [
    "OPENED",
    "REOPENED",
    "UPDATED",
    "GroupOutcome",
    "IllegalTransition",
    "Incident",
    "IncidentNotFound",
    "IncidentStore",
    "IncidentStoreBase",
    "StoredSpanRecord",
    "TimelineEntry",
    "UnknownTimelineKind",
]
