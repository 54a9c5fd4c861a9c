"""Incidents and their timeline as plain values, and the errors the incident store raises."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SEVERITIES = ("low", "medium", "high", "critical")
ACTIVE_STATUSES = ("open", "acknowledged", "mitigated")
STATUSES = (*ACTIVE_STATUSES, "resolved")
TIMELINE_KINDS = (
    "classified",
    "action_started",
    "action_finished",
    "action_skipped",
    "alert_received",
    "status_changed",
    "state_changed",
    "note",
)
# What ``record_error`` did, also the kinds of the processor's events.
OPENED, REOPENED, UPDATED = "opened", "reopened", "updated"


# What an incident id (``INC_<epoch ms>_<6 of a-z0-9>``) and a trace id look like.
INCIDENT_ID_PATTERN = r"^INC_\d{13}_[a-z0-9]{6}$"
TRACE_ID_PATTERN = r"^[0-9a-f]{32}$"


class IncidentNotFound(LookupError):
    def __init__(self, incident_id: str) -> None:
        super().__init__(f"no incident with id {incident_id!r}; list incidents to see valid ids")
        self.incident_id = incident_id


class IllegalTransition(ValueError):
    """A status change the lifecycle does not allow (e.g. resolving a resolved incident)."""

    def __init__(self, incident_id: str, status: str, wanted: str, hint: str) -> None:
        super().__init__(f"incident {incident_id} is {status} and cannot be {wanted}; {hint}")
        self.incident_id = incident_id
        self.status = status
        self.wanted = wanted


class IncidentStoreUnavailable(Exception):
    """The incident store's database could not be used; says why and what to do."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the incident store is unavailable: {reason}")
        self.reason = reason


class UnknownTimelineKind(ValueError):
    def __init__(self, kind: str) -> None:
        super().__init__(f"unknown timeline kind {kind!r}; use one of {', '.join(TIMELINE_KINDS)}")


def iso(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


@dataclass
class Incident:
    id: str  # INC_<epoch ms>_<6 lowercase alphanumerics>
    fingerprint: str
    status: str  # open | acknowledged | mitigated | resolved
    severity: str
    type: str
    impact: str
    recoverable: bool
    protocol: str | None
    rule: str
    component: str
    source_service: str
    span_name: str
    exception_type: str
    message: str  # the latest occurrence's message, as it was
    count: int  # occurrences since first seen, across reopenings
    reopen_count: int
    first_seen: float  # epoch seconds, by the store's clock
    last_seen: float
    opened_at: float  # first seen, or the last reopening
    acknowledged_at: float | None = None
    mitigated_at: float | None = None
    resolved_at: float | None = None
    # Seconds from opened_at to the first of mitigated/resolved in the current episode.
    recovery_time_s: float | None = None
    trace_ids: list[str] = field(default_factory=list)  # the most recent, newest last

    @property
    def active(self) -> bool:
        return self.status != "resolved"

    @classmethod
    def from_row(cls, row: sqlite3.Row | Mapping[str, Any]) -> Incident:
        values = dict(row)
        values["recoverable"] = bool(values["recoverable"])
        values["trace_ids"] = json.loads(values["trace_ids"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The seed's incident shape (camelCase), with the fields it lacked."""
        recovery = self.recovery_time_s
        return {
            "id": self.id,
            "timestamp": iso(self.first_seen),
            "status": self.status,
            "classification": {
                "severity": self.severity,
                "type": self.type,
                "impact": self.impact,
                "recoverable": self.recoverable,
                "rule": self.rule,
            },
            "component": self.component,
            "sourceService": self.source_service,
            "fingerprint": self.fingerprint,
            "spanName": self.span_name,
            "exceptionType": self.exception_type,
            "message": self.message,
            "count": self.count,
            "reopenCount": self.reopen_count,
            "firstSeen": iso(self.first_seen),
            "lastSeen": iso(self.last_seen),
            "openedAt": iso(self.opened_at),
            "acknowledgedAt": iso(self.acknowledged_at),
            "mitigatedAt": iso(self.mitigated_at),
            "resolvedAt": iso(self.resolved_at),
            "traceIds": list(self.trace_ids),
            "response": {
                "protocol": self.protocol,
                "recoveryTime": None if recovery is None else f"{recovery:.0f} seconds",
                "recoveryTimeSeconds": recovery,
            },
        }


@dataclass(frozen=True)
class TimelineEntry:
    seq: int
    incident_id: str
    at: float
    kind: str
    actor: str
    message: str
    data: dict[str, Any]

    @classmethod
    def from_row(cls, row: sqlite3.Row | Mapping[str, Any]) -> TimelineEntry:
        values = dict(row)
        values["data"] = json.loads(values["data"]) if values["data"] else {}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": iso(self.at),
            "kind": self.kind,
            "who": self.actor,
            "message": self.message,
            "data": self.data,
        }
