"""What an operator sees at a glance: status, health, metrics summary, system test."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from service.health.checks import Status
from service.health.system_test import run_steps, system_steps
from service.health.uptime import describe_uptime
from service.resilience.call_stats import MAX_HOURS
from service.web.auth import AdminAuth, AdminRead
from service.web.deps import (
    Health,
    Incidents,
    MaybeBackups,
    MemoryCheck,
    StartedAt,
    State,
    Stores,
    Team,
    Tracer,
)
from service.web.routes.breakers import breaker_report

router = APIRouter(prefix="/api/emergency", tags=["status"], dependencies=[AdminRead])
NO_BACKUPS = {"available": 0, "lastBackup": None, "totalSize": "0 B"}


@router.get("/status")
async def status(
    team: Team,
    health: Health,
    memory_check: MemoryCheck,
    started_at: StartedAt,
    incidents: Incidents,
    state: State,
    backups: MaybeBackups,
) -> dict[str, Any]:
    totals = breaker_report(team)["totals"]
    report = health.last
    memory = memory_check.last
    uptime_s = time.time() - started_at
    active = incidents.active_counts()
    return {
        "systemState": state.state.value,
        "stateReason": state.reason,
        "activeIncidents": sum(active.values()),
        "circuitBreakers": {
            "total": totals["total"],
            "open": totals["open"],
            "closed": totals["closed"],
            "halfOpen": totals["half_open"],
        },
        "backups": backups.summary() if backups is not None else NO_BACKUPS,
        "health": {
            "overall": report.overall.value if report else "unknown",
            "memoryUsage": (f"{memory.ratio:.0%}" if memory.ratio >= 0.1 else f"{memory.ratio:.1%}")
            if memory
            else None,
            "uptime": describe_uptime(uptime_s),
            "uptimeSeconds": round(uptime_s, 1),
        },
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
    report = await health.evaluate() if refresh or health.last is None else health.last
    state.evaluate()
    body = {**report.as_dict(), "systemState": state.state.value}
    return JSONResponse(body, status_code=503 if report.overall is Status.UNHEALTHY else 200)


@router.get("/metrics")
async def metrics_summary(
    team: Team,
    incidents: Incidents,
    timeRange: float = Query(24, ge=1, le=MAX_HOURS, description="hours, 1 to 168"),
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
