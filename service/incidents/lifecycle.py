"""The incident store's interface, and what every backend of it shares: the lifecycle
(open → acknowledged → mitigated → resolved, reopened when a resolved failure recurs),
auto-resolve, and the checks made before anything is written.

``IncidentStore`` implements the abstract methods once over SQLite (one file) and PostgreSQL
(``PgIncidentStore``, shared by replicas); callers depend on ``IncidentStoreBase``.
"""

from __future__ import annotations

import builtins
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from service.incidents.merge import Group, GroupOutcome, StoredSpanRecord, group_by_fingerprint
from service.incidents.model import (
    ACTIVE_STATUSES,
    TIMELINE_KINDS,
    IllegalTransition,
    Incident,
    TimelineEntry,
    UnknownTimelineKind,
)
from telemetry.classifier import Classification
from telemetry.span_record import SpanRecord


class IncidentStoreBase(ABC):
    def __init__(
        self,
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
        self.max_trace_ids = max_trace_ids
        self.max_span_records = max_span_records
        # Per incident per batch: see ``incident_merge.span_record_rows``.
        self.records_per_incident = records_per_incident
        self.quiet_period_s = quiet_period_s
        self.is_component_healthy = is_component_healthy
        self.clock = clock

    @abstractmethod
    def close(self) -> None: ...

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
        return self._write_batch(group_by_fingerprint(items), self.clock(), keep_records)

    @abstractmethod
    def _write_batch(
        self, groups: dict[str, Group], now: float, keep_records: bool
    ) -> list[GroupOutcome]:
        """Merge each group into its incident (``incident_merge.merge_group``) and, with
        ``keep_records``, store the sampled span records, all in one transaction."""

    @abstractmethod
    def stored_span_records(
        self, limit: int | None = None, incident_id: str | None = None
    ) -> list[StoredSpanRecord]:
        """Stored error span records (newest ``limit``), oldest first, each with the
        classification it got and how many failures it stands for."""

    # -- reading --------------------------------------------------------------------------

    @abstractmethod
    def get(self, incident_id: str) -> Incident:
        """Raises IncidentNotFound."""

    @abstractmethod
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

    @abstractmethod
    def timeline(self, incident_id: str) -> builtins.list[TimelineEntry]: ...

    @abstractmethod
    def active_counts_by_severity(self) -> dict[str, int]: ...

    @abstractmethod
    def counts_by_severity(self, since: float) -> dict[str, int]:
        """Incidents seen since ``since`` (epoch seconds), by severity, any status."""

    @abstractmethod
    def find_active(self, component: str, type: str | None = None) -> Incident | None:
        """The active incident of a component (and type) seen most recently, if any."""

    # -- lifecycle ------------------------------------------------------------------------

    def acknowledge(self, incident_id: str, who: str, note: str = "") -> Incident:
        """Someone is on it: any unresolved incident, also one the responder mitigated
        already (it stays mitigated; the timeline says who acknowledged it)."""
        return self._transition(incident_id, "acknowledged", who, note, ACTIVE_STATUSES)

    def mitigate(self, incident_id: str, who: str, note: str = "") -> Incident:
        return self._transition(incident_id, "mitigated", who, note, ("open", "acknowledged"))

    def resolve(self, incident_id: str, who: str, resolution: str = "") -> Incident:
        return self._transition(incident_id, "resolved", who, resolution, ACTIVE_STATUSES)

    def auto_resolve(self, now: float | None = None) -> builtins.list[Incident]:
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

    @abstractmethod
    def _transition(
        self,
        incident_id: str,
        wanted: str,
        who: str,
        note: str,
        allowed_from: Sequence[str],
        now: float | None = None,
    ) -> Incident:
        """Change the status with ``change_status`` under a row lock, and note it on the
        timeline; raises IncidentNotFound or IllegalTransition."""

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
        seq = self._add_timeline(incident_id, now, kind, actor, message, data or {})
        return TimelineEntry(seq, incident_id, now, kind, actor, message, data or {})

    @abstractmethod
    def _add_timeline(
        self,
        incident_id: str,
        at: float,
        kind: str,
        actor: str,
        message: str,
        data: dict[str, Any],
    ) -> int:
        """Insert the entry and return its seq; raises IncidentNotFound."""


def change_status(
    incident: Incident, wanted: str, note: str, allowed_from: Sequence[str], now: float
) -> tuple[str, str]:
    """Move ``incident`` (as locked for the update) to ``wanted``; returns the timeline
    entry's kind and message. Raises IllegalTransition when the lifecycle does not allow it.

    An acknowledgement never moves an incident back: one already acknowledged or mitigated
    keeps its status (and the time of its first acknowledgement), and the entry is a note.
    """
    if incident.status not in allowed_from:
        raise IllegalTransition(
            incident.id, incident.status, wanted, _hint(incident.status, wanted)
        )
    previous = incident.status
    if wanted == "acknowledged" and previous != "open":
        if incident.acknowledged_at is None:
            incident.acknowledged_at = now
        words = (
            "acknowledged again"
            if previous == "acknowledged"
            else f"acknowledged; stays {previous}"
        )
        return "note", words + (f": {note}" if note else "")
    incident.status = wanted
    setattr(incident, f"{wanted}_at", now)
    if incident.recovery_time_s is None and wanted in ("mitigated", "resolved"):
        incident.recovery_time_s = max(now - incident.opened_at, 0.0)
    return "status_changed", f"{previous} → {wanted}" + (f": {note}" if note else "")


def _hint(status: str, wanted: str) -> str:
    if status == "resolved":
        return "it reopens by itself when the error recurs"
    if status == wanted:
        return "nothing to do"
    return "the lifecycle is open → acknowledged → mitigated → resolved"


def in_filters(
    status: str | Sequence[str] | None,
    severity: str | Sequence[str] | None,
    component: str | Sequence[str] | None,
) -> list[tuple[str, list[str]]]:
    """``list()``'s filters as (column, wanted values); ``status="active"`` is any status
    but resolved."""
    if status == "active":
        status = ACTIVE_STATUSES
    filters = []
    for column, wanted in (("status", status), ("severity", severity), ("component", component)):
        if wanted is not None:
            filters.append((column, [wanted] if isinstance(wanted, str) else list(wanted)))
    return filters
