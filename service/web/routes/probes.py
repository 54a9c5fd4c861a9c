"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse

from telemetry.providers import PROMETHEUS_CONTENT_TYPE

router = APIRouter(tags=["probes"])


@router.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    "/readyz",
    responses={503: {"description": "not ready: starting, stopping, or a store is not open"}},
)
async def readyz(request: Request) -> JSONResponse:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        return JSONResponse({"status": "not ready", "reason": "starting"}, status_code=503)
    closed = [name for name, s in runtime.stores.by_component().items() if not s.is_open]
    if not runtime.readiness.ready or closed:
        reason = runtime.readiness.reason or f"stores not open: {', '.join(closed)}"
        return JSONResponse(
            {"status": "not ready", "reason": reason},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    return JSONResponse({"status": "ready"})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(
        request.app.state.telemetry.render_metrics(), media_type=PROMETHEUS_CONTENT_TYPE
    )
