"""What an operator sees at a glance: status, health, metrics summary, system test."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from service.auth import AdminAuth, AdminRead
from service.call_stats import MAX_HOURS
from service.deps import RuntimeDep
from service.health.checks import Status
from service.health.uptime import describe_uptime
from service.routes.breakers import breaker_report
from service.system_test import run_steps

router = APIRouter(prefix="/api/emergency", tags=["status"], dependencies=[AdminRead])


@router.get("/status")
async def status(runtime: RuntimeDep) -> dict[str, Any]:
    totals = breaker_report(runtime.team)["totals"]
    report = runtime.health.last
    memory = runtime.memory_check.last
    uptime_s = time.time() - runtime.started_at
    active = runtime.active_incidents()
    return {
        "systemState": runtime.state.state.value,
        "stateReason": runtime.state.reason,
        "activeIncidents": sum(active.values()),
        "circuitBreakers": {
            "total": totals["total"],
            "open": totals["open"],
            "closed": totals["closed"],
            "halfOpen": totals["half_open"],
        },
        "backups": runtime.backups_summary(),
        "health": {
            "overall": report.overall.value if report else "unknown",
            "memoryUsage": (f"{memory.ratio:.0%}" if memory.ratio >= 0.1 else f"{memory.ratio:.1%}")
            if memory
            else None,
            "uptime": describe_uptime(uptime_s),
            "uptimeSeconds": round(uptime_s, 1),
        },
    }


@router.get("/health")
async def health(
    runtime: RuntimeDep, refresh: bool = Query(True, description="run every check now")
) -> JSONResponse:
    report = (
        await runtime.health.evaluate()
        if refresh or runtime.health.last is None
        else (runtime.health.last)
    )
    runtime.state.evaluate()
    body = {**report.as_dict(), "systemState": runtime.state.state.value}
    return JSONResponse(body, status_code=503 if report.overall is Status.UNHEALTHY else 200)


@router.get("/metrics")
async def metrics_summary(
    runtime: RuntimeDep,
    timeRange: float = Query(24, ge=1, le=MAX_HOURS, description="hours, 1 to 168"),
) -> dict[str, Any]:
    stats = runtime.team.stats
    return {
        "timeRangeHours": timeRange,
        "overall": stats.summary(timeRange).as_dict(),
        "agents": {agent: stats.summary(timeRange, agent).as_dict() for agent in stats.agents()},
        "incidentsBySeverity": await asyncio.to_thread(runtime.incidents_by_severity, timeRange),
    }


@router.post("/test-system")
async def test_system(runtime: RuntimeDep, who: AdminAuth) -> JSONResponse:
    result = await run_steps(runtime.system_test_steps())
    return JSONResponse(result, status_code=200)
