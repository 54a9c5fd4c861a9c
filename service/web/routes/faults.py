"""Fault injection (development and test only): make an agent's next calls really fail.

The router is not mounted in production, so these paths answer 404 there.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field

from service.resilience.faults import ERROR_TYPES
from service.web.auth import AdminAuth
from service.web.deps import Faults, OneValueEach, Team
from service.web.json_route import JsonRoute
from service.web.openapi import errors
from service.web.routes.json_types import AnyNumber, JsonNumber, WholeNumber

router = APIRouter(route_class=JsonRoute, prefix="/api/emergency", tags=["fault injection"])

ErrorType = Literal["database", "network", "agent", "system", "resource", "timeout"]


class SimulateError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    errorType: ErrorType = "agent"
    severity: Literal["low", "medium", "high", "critical"] | None = Field(
        None, description="what the caller expects; the classification rules decide"
    )
    component: str = Field(min_length=1, max_length=64, description="agent name or seed alias")
    message: str | None = Field(None, min_length=1, max_length=500)
    count: Annotated[int, Field(ge=1, le=10_000), WholeNumber] | None = Field(
        None, description="failing calls; default: all"
    )
    durationSeconds: Annotated[float, Field(gt=0, le=24 * 3600), AnyNumber] | None = None
    delaySeconds: JsonNumber = Field(0.0, ge=0, le=60, description="latency before failing")
    failureRate: JsonNumber = Field(1.0, gt=0, le=1, description="share of calls that fail")


@router.post("/simulate-error", responses=errors(404))
async def simulate_error(
    body: SimulateError, team: Team, faults: Faults, who: AdminAuth
) -> dict[str, Any]:
    guard = team.get(body.component)
    assert faults is not None  # the router is mounted only with fault injection on
    fault = faults.inject(
        guard.name,
        body.errorType,
        message=body.message,
        count=body.count,
        delay_s=body.delaySeconds,
        duration_s=body.durationSeconds,
        rate=body.failureRate,
    )
    return {
        "injected": True,
        "component": guard.name,
        "errorType": fault.error_type,
        "exception": ERROR_TYPES[fault.error_type].__name__,
        "message": fault.message,
        "remainingCalls": fault.remaining,
        "failureRate": fault.rate,
        "expectedSeverity": body.severity,
    }


@router.delete("/simulate-error", responses=errors(404))
async def clear_simulated_errors(
    team: Team,
    faults: Faults,
    who: AdminAuth,
    _: Annotated[None, OneValueEach],  # after the token: a 401 comes first
    component: str | None = Query(
        None, min_length=1, max_length=64, description="one agent; leave out for every agent"
    ),
) -> dict[str, Any]:
    if faults is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "fault injection is off")
    name = team.get(component).name if component else None
    faults.clear(name)
    return {"cleared": name or "all", "active": sorted(faults.active())}
