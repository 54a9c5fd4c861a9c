"""Incidents: list, details with the timeline, acknowledge, resolve; and kept traces."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from service.agents.base import ALIASES
from service.errors import ARCHIVE_NOT_READ
from service.incidents.model import INCIDENT_ID_PATTERN as INCIDENT_ID
from service.incidents.model import TRACE_ID_PATTERN as TRACE_ID
from service.incidents.model import IllegalTransition, Incident, IncidentNotFound, iso
from service.incidents.service import IncidentService
from service.web.auth import AdminAuth, AdminRead
from service.web.deps import (
    Audit,
    Incidents,
    Keeper,
    Minimal,
    OneValueEach,
    Settings,
    State,
    Team,
    Traces,
)
from service.web.json_route import JsonRoute
from service.web.openapi import errors
from service.web.routes.json_types import OneLine, Reason
from telemetry.providers import otlp_endpoint_configured

router = APIRouter(
    route_class=JsonRoute,
    prefix="/api/emergency",
    tags=["incidents"],
    dependencies=[AdminRead, OneValueEach],
)

IncidentId = Path(pattern=INCIDENT_ID, description="INC_<epoch ms>_<6 characters>")
Status = Literal["open", "acknowledged", "mitigated", "resolved", "active"]
Severity = Literal["low", "medium", "high", "critical"]


class Acknowledge(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: OneLine = Field("", max_length=2000)


class Resolve(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resolution: Reason = Field(min_length=1, max_length=2000)


# Grafana's Explore on the Tempo data source provisioned in grafana/, as compose publishes it.
# The data source looks a trace id up within Explore's time range (traceQuery.timeShiftEnabled
# sends it to Tempo as start and end), so the range spans all that deploy/tempo.yaml keeps
# (block_retention, 14 days): an incident's traces are often older than a day.
TEMPO_EXPLORE_RANGE = {"from": "now-14d", "to": "now"}
TEMPO_EXPLORE_TEMPLATE = "http://127.0.0.1:3000/explore?schemaVersion=1&panes=" + quote(
    json.dumps(
        {
            "t": {
                "datasource": "ers-tempo",
                "queries": [
                    {
                        "refId": "A",
                        "datasource": {"type": "tempo", "uid": "ers-tempo"},
                        "queryType": "traceql",
                        "query": "TRACE_ID",
                    }
                ],
                "range": TEMPO_EXPLORE_RANGE,
            }
        },
        separators=(",", ":"),
    ),
    safe="",
).replace("TRACE_ID", "{trace_id}")


def trace_link_template(settings: Any) -> str | None:
    """``trace_url_template``; else, when traces go to a collector (and on to Tempo), Grafana's
    Explore on Tempo; else None."""
    if settings.trace_url_template:
        return str(settings.trace_url_template)
    return TEMPO_EXPLORE_TEMPLATE if otlp_endpoint_configured() else None


def incident_view(settings: Any, incident: Incident) -> dict[str, Any]:
    body = incident.to_dict()
    trace_ids = [t for t in incident.trace_ids if t]
    body["traceIds"] = trace_ids
    base = trace_link_template(settings)
    body["traces"] = [
        {
            "traceId": trace_id,
            "api": f"/api/emergency/traces/{trace_id}",
            "link": base.format(trace_id=trace_id) if base else None,
        }
        for trace_id in trace_ids
    ]
    return body


@router.get("/incidents")
async def list_incidents(
    incidents: Incidents,
    settings: Settings,
    status_filter: Status | None = Query(None, alias="status"),
    severity: Severity | None = None,
    component: str | None = Query(None, min_length=1, max_length=64),
    since: datetime | None = Query(
        None, description="ISO-8601, UTC unless it names an offset; last seen at or after"
    ),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=1_000_000),
) -> dict[str, Any]:
    items, total = await asyncio.to_thread(
        incidents.store.list,
        status=status_filter,
        severity=severity,
        # The seed's agent names (WPA) are the agents' (workout); other components as given.
        component=ALIASES.get(component.strip().lower(), component) if component else None,
        since=utc_timestamp(since) if since else None,
        limit=limit,
        offset=offset,
    )
    return {
        "total": total,
        "limit": limit,
        "offset": offset,
        "incidents": [incident_view(settings, i) for i in items],
    }


def utc_timestamp(moment: datetime) -> float:
    """A time without an offset (``2026-12-03T07:30:00``, ``2026-12-03``) is UTC, as every
    time ERS shows is, not the server's local time."""
    return (moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment).timestamp()


@router.get("/incidents/{incident_id}", responses=errors(404))
async def get_incident(
    incidents: Incidents, settings: Settings, incident_id: str = IncidentId
) -> dict[str, Any]:
    store = incidents.store
    try:
        incident = await asyncio.to_thread(store.get, incident_id)
    except IncidentNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    timeline = await asyncio.to_thread(store.timeline, incident_id)
    return {
        **incident_view(settings, incident),
        "timeline": [entry.to_dict() for entry in timeline],
    }


@router.post("/incidents/{incident_id}/acknowledge", responses=errors(404, 409))
async def acknowledge(
    incidents: Incidents,
    settings: Settings,
    who: AdminAuth,
    body: Acknowledge | None = None,
    incident_id: str = IncidentId,
) -> dict[str, Any]:
    return await _change(
        incidents, settings, lambda s: s.acknowledge(incident_id, who, body.note if body else "")
    )


@router.post("/incidents/{incident_id}/resolve", responses=errors(404, 409))
async def resolve(
    incidents: Incidents,
    settings: Settings,
    state: State,
    team: Team,
    minimal: Minimal,
    keeper: Keeper,
    body: Resolve,
    who: AdminAuth,
    incident_id: str = IncidentId,
) -> dict[str, Any]:
    view = await _change(
        incidents, settings, lambda s: s.resolve(incident_id, who, body.resolution)
    )
    resolved = await asyncio.to_thread(incidents.store.get, incident_id)
    incidents.observe_recovery(resolved)
    # The responder isolated agents for this incident; its cause is fixed, so they take
    # trial calls again (half-open) instead of waiting out the isolation's time, and its
    # serve_cached no longer answers in their place (as a reset or a release ends it).
    released, mine = [], f"incident {incident_id}:"
    for guard in team.guards.values():
        forcing = guard.breaker.forcing
        if (
            forcing
            and forcing.source == "responder"
            and (forcing.incident == incident_id or mine in forcing.reason)
        ):
            guard.breaker.release(source=who)  # its events end the cached answers too
            released.append(guard.name)
    view["released"] = released
    # Likewise chat's minimal mode, when this incident is the one that turned it on.
    view["minimalModeEnded"] = minimal.leave_for(incident_id)
    # Answered once the releases and the mode's end are saved: a restart right after the
    # reply must not put them back.
    view["saved"] = await keeper.saved() is None
    # The system state follows at once: the status must not say "1 critical incident
    # active" beside "active incidents 0".
    await incidents.changed_by_hand()
    state.evaluate()
    return view


async def _change(incidents: IncidentService, settings: Any, change: Any) -> dict[str, Any]:
    """``change(store)``, a blocking round trip to the store, off the event loop."""
    try:
        incident = await asyncio.to_thread(change, incidents.store)
    except IncidentNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except IllegalTransition as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return incident_view(settings, incident)


@router.get("/audit")
async def list_audit(audit: Audit, limit: int = Query(50, ge=1, le=1000)) -> dict[str, Any]:
    """What was done to the state and by whom, newest first: rollbacks people made and
    interrupted ones undone at start-up."""
    entries = await asyncio.to_thread(audit.recent, limit)
    return {"entries": [{**entry, "at": iso(entry["at"])} for entry in entries]}


@router.get("/traces/{trace_id}", responses=errors(404))
async def get_trace(
    traces: Traces, response: Response, trace_id: str = Path(pattern=TRACE_ID)
) -> dict[str, Any]:
    """The kept trace as a span tree. A trace held in memory answers without waiting for the
    archive when the archive does not answer within a second (a frozen database) or cannot
    be read: the header ``ERS-Archive-Not-Read`` then says why, and the spans kept only
    elsewhere (before a restart, or by another replica) may be missing."""
    tree, archive_unread = await asyncio.to_thread(traces.tree, trace_id)  # may read the archive
    if tree is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"trace {trace_id} is not kept: unknown, without errors, or evicted",
        )
    if archive_unread:  # answered from memory alone: spans kept elsewhere may be missing
        response.headers[ARCHIVE_NOT_READ] = archive_unread
    return tree
