"""What an operator sees at a glance: status, health, metrics summary, system test."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from service.errors import StoreUnavailable
from service.health.checks import Status
from service.health.system_test import run_steps, system_steps
from service.health.uptime import describe_uptime
from service.resilience.call_stats import MAX_HOURS
from service.web.auth import AdminAuth, AdminRead
from service.web.deps import (
    Health,
    Incidents,
    Keeper,
    MaybeBackups,
    MemoryCheck,
    Minimal,
    OneValueEach,
    StartedAt,
    State,
    Stores,
    Team,
    Tracer,
)
from service.web.json_route import JsonRoute
from service.web.routes.breakers import breaker_report

log = logging.getLogger("ers")
router = APIRouter(
    route_class=JsonRoute,
    prefix="/api/emergency",
    tags=["status"],
    dependencies=[AdminRead, OneValueEach],
)
NO_BACKUPS = {"available": 0, "lastBackup": None, "totalSize": None}


@router.get("/status")
async def status(
    team: Team,
    health: Health,
    memory_check: MemoryCheck,
    started_at: StartedAt,
    incidents: Incidents,
    state: State,
    backups: MaybeBackups,
    minimal_mode: Minimal,
) -> dict[str, Any]:
    totals = breaker_report(team)["totals"]
    report = await health.refresh()
    memory = memory_check.last
    uptime_s = time.time() - started_at
    active = incidents.active_counts()
    return {
        "systemState": state.state.value,
        "stateReason": state.reason,
        "activeIncidents": sum(active.values()),
        # While on, chat answers with short guidance and calls no agent.
        "minimalMode": minimal_mode.as_dict(),
        "circuitBreakers": {
            "total": totals["total"],
            "open": totals["open"],
            "closed": totals["closed"],
            "halfOpen": totals["half_open"],
            # Calls go through unguarded: neither open nor closed, and counted apart.
            "disabled": totals["disabled"],
            # Closed, but left alone for now: the agent asked to wait (rate limited).
            "coolingDown": totals["cooling_down"],
        },
        "backups": await backups.summary() if backups is not None else NO_BACKUPS,
        "health": {
            "overall": report.overall.value if report else "unknown",
            # Its checks of the stores, disk and backups ran then; breakers and incidents now.
            "fullCheckSecondsAgo": round(time.time() - report.full_at, 1) if report else None,
            "memoryUsage": (f"{memory.ratio:.0%}" if memory.ratio >= 0.1 else f"{memory.ratio:.1%}")
            if memory
            else None,
            "uptime": describe_uptime(uptime_s),
            "uptimeSeconds": round(uptime_s, 1),
        },
    }


@router.delete("/minimal-mode")
async def end_minimal_mode(minimal_mode: Minimal, keeper: Keeper, who: AdminAuth) -> dict[str, Any]:
    """End minimal response mode now: chat calls the agents again. The responder turns it
    on for a critical incident, for a limited time; an operator who has dealt with the
    cause need not wait for that time to run out. Answered once the end is saved, so a
    restart does not put the mode back. On PostgreSQL the mode is the fleet's: another
    replica's responder may have turned it on, not followed here yet; the shared record
    says so, and ending it here ends it on every replica."""
    try:
        kept, unread = await keeper.kept("minimal_mode"), None
    except StoreUnavailable as exc:
        kept, unread = None, str(exc)
    ended = minimal_mode.leave(kept if isinstance(kept, dict) else None)
    log.info("minimal response mode %s by %s", "ended" if ended else "was already off", who)
    problem = await keeper.saved()
    message = (
        "minimal response mode ended: chat calls the agents again"
        if ended
        else "minimal response mode was not on; nothing to end"
    )
    if unread is not None and not ended:  # off here; on other replicas, it is not known
        message = f"minimal response mode was not on here; the fleet's record not read ({unread})"
    if problem is not None:
        message += f"; not saved across restarts yet ({problem}), retried in the background"
    return {
        "ended": ended,
        "message": message,
        "saved": problem is None,
        "minimalMode": minimal_mode.as_dict(),
    }


@router.get(
    "/health",
    responses={
        503: {
            "description": "unhealthy (the same report, so a load balancer can act on it), "
            "or the service is starting or stopping"
        }
    },
)
async def health(
    health: Health, state: State, refresh: bool = Query(True, description="run every check now")
) -> JSONResponse:
    report = None if refresh else await health.refresh()
    report = report or await health.evaluate()
    state.evaluate()
    body = {**report.as_dict(), "systemState": state.state.value}
    return JSONResponse(body, status_code=503 if report.overall is Status.UNHEALTHY else 200)


def _finite_hours(value: Any) -> Any:
    # A NaN fails every range check, and was told "less than or equal to 168".
    try:
        hours = float(value)
    except (TypeError, ValueError):
        return value  # not a number at all: said so as such
    if not math.isfinite(hours):
        raise PydanticCustomError(
            "finite_hours",
            "must be a finite number of hours, from 1 to {most}, not NaN or infinity",
            {"most": MAX_HOURS},
        )
    return value


@router.get("/metrics")
async def metrics_summary(
    team: Team,
    incidents: Incidents,
    timeRange: Annotated[
        float,
        Query(ge=1, le=MAX_HOURS, description="hours, 1 to 168"),
        BeforeValidator(_finite_hours),
    ] = 24.0,  # a float as a given one is: 24.0 whether given or not
) -> dict[str, Any]:
    stats = team.stats
    return {
        "timeRangeHours": timeRange,
        "overall": stats.summary(timeRange).as_dict(),
        "agents": {agent: stats.summary(timeRange, agent).as_dict() for agent in stats.agents()},
        "incidentsBySeverity": await asyncio.to_thread(
            incidents.store.counts_by_severity, time.time() - timeRange * 3600
        ),
    }


@router.post("/test-system")
async def test_system(
    who: AdminAuth,
    team: Team,
    stores: Stores,
    backups: MaybeBackups,
    incidents: Incidents,
    tracer: Tracer,
) -> JSONResponse:
    result = await run_steps(system_steps(team, stores, backups, incidents, tracer))
    return JSONResponse(result, status_code=200)
