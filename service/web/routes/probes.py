"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse

from service.health.checks import HealthCheck, Status
from service.web.json_route import JsonRoute
from telemetry.providers import PROMETHEUS_CONTENT_TYPE

router = APIRouter(route_class=JsonRoute, tags=["probes"])


def _headless(reply: Response) -> Response:
    """The answer to a HEAD probe (some load balancers send one): the GET's status and
    headers, without its body."""
    return Response(status_code=reply.status_code, headers=dict(reply.headers))


@router.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "alive"}


@router.head("/livez", include_in_schema=False)
async def livez_head() -> Response:
    return _headless(JSONResponse(await livez()))


@router.get(
    "/readyz",
    responses={
        503: {
            "description": "not ready: starting, stopping, a store is not open, or (on SQLite)"
            " the disk holding the state is full"
        }
    },
)
async def readyz(request: Request) -> JSONResponse:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        return JSONResponse({"status": "not ready", "reason": "starting"}, status_code=503)
    closed = [name for name, s in runtime.stores.by_component().items() if not s.is_open]
    reason = ""
    if not runtime.readiness.ready or closed:
        reason = runtime.readiness.reason or f"stores not open: {', '.join(closed)}"
    elif runtime.stores.database is None:
        reason = await _disk_full(runtime.health.checks)
    if reason:
        return JSONResponse(
            {"status": "not ready", "reason": reason},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    return JSONResponse({"status": "ready"})


@router.head("/readyz", include_in_schema=False)
async def readyz_head(request: Request) -> Response:
    return _headless(await readyz(request))


# Below this much free space on the disk of an SQLite state, turns' commits fail.
READY_FREE_BYTES = 64 * 1024 * 1024


async def _disk_full(checks: list[HealthCheck]) -> str:
    """On SQLite the state is this replica's own files: with their disk (nearly) full every
    turn's commit fails, while a store's write probe (a row that fits in pages its file
    holds already) may still pass. The disk check is one statvfs, so it runs now."""
    for check in checks:
        if check.name == "disk":
            result = await check.run()
            free = result.figures.get("freeBytes")
            if result.status is Status.UNHEALTHY and (free is None or free < READY_FREE_BYTES):
                return f"the state cannot be written: {result.reason}"
    return ""


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(
        request.app.state.telemetry.render_metrics(), media_type=PROMETHEUS_CONTENT_TYPE
    )
