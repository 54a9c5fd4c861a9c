"""The incident lifecycle's rules: open → acknowledged → mitigated → resolved, reopened when
a resolved failure recurs; which change is allowed from which status and what it sets, and
the filters a listing takes. ``IncidentStore`` applies them under a row lock."""

from __future__ import annotations

from collections.abc import Sequence

from service.incidents.model import (
    ACTIVE_STATUSES,
    IllegalTransition,
    Incident,
)


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
