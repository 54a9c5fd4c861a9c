"""Annotated dependencies: a route's signature says what it needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from opentelemetry import trace
from opentelemetry.trace import Tracer as TracerModel

from service.backups.rollbacks import Rollbacks as RollbacksModel
from service.backups.service import BackupService
from service.chat.minimal_mode import MinimalMode
from service.chat.service import ChatService
from service.chat.team import Team as TeamModel
from service.health.checks import MemoryCheck as MemoryCheckModel
from service.health.monitor import HealthMonitor
from service.incidents.alert_webhook import AlertHandler
from service.incidents.audit import AuditLog
from service.incidents.service import IncidentService
from service.resilience.faults import FaultInjector
from service.resilience.state_keeper import StateKeeper
from service.resilience.system_state import SystemStateMachine
from service.settings import Settings as SettingsModel
from service.stores import Stores as StoresModel
from service.web.kept_traces import KeptTraces
from service.web.runtime import Runtime
from telemetry.classifier import NOT_AN_INCIDENT


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the service is starting")
    return runtime


_Runtime = Annotated[Runtime, Depends(get_runtime)]


async def get_settings(request: Request) -> SettingsModel:
    return request.app.state.settings


async def get_tracer(request: Request) -> TracerModel:
    return request.app.state.telemetry.tracer


def _part(pick: Callable[[Runtime], object]) -> Any:
    """A dependency on one part the lifespan built."""

    async def get(runtime: _Runtime) -> object:
        return pick(runtime)

    return Depends(get)


def _backups_off() -> HTTPException:
    """The 503 of a backup route with backups_enabled=false: what the operator chose, not a
    failure, so no incident (each route's request opened one, `ers backup list` too)."""
    trace.get_current_span().set_attribute(NOT_AN_INCIDENT, "backups are turned off")
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "backups are turned off")


async def get_backups(runtime: _Runtime) -> BackupService:
    if runtime.backups is None:
        raise _backups_off()
    await runtime.backups.first_opening()
    return runtime.backups


async def get_rollbacks(runtime: _Runtime) -> RollbacksModel:
    if runtime.rollbacks is None:
        raise _backups_off()
    return runtime.rollbacks


Settings = Annotated[SettingsModel, Depends(get_settings)]
Tracer = Annotated[TracerModel, Depends(get_tracer)]
Chat = Annotated[ChatService, _part(lambda r: r.chat)]
Team = Annotated[TeamModel, _part(lambda r: r.team)]
Stores = Annotated[StoresModel, _part(lambda r: r.stores)]
Faults = Annotated[FaultInjector | None, _part(lambda r: r.faults)]
Incidents = Annotated[IncidentService, _part(lambda r: r.incident_service)]
Traces = Annotated[KeptTraces, _part(lambda r: r.traces)]
Alerts = Annotated[AlertHandler, _part(lambda r: r.alerts)]
Audit = Annotated[AuditLog, _part(lambda r: r.audit)]
State = Annotated[SystemStateMachine, _part(lambda r: r.state)]
Keeper = Annotated[StateKeeper, _part(lambda r: r.state_keeper)]
Health = Annotated[HealthMonitor, _part(lambda r: r.health)]
MemoryCheck = Annotated[MemoryCheckModel, _part(lambda r: r.memory_check)]
StartedAt = Annotated[float, _part(lambda r: r.started_at)]
Minimal = Annotated[MinimalMode, _part(lambda r: r.minimal_mode)]
MaybeBackups = Annotated[BackupService | None, _part(lambda r: r.backups)]
Backups = Annotated[BackupService, Depends(get_backups)]
Rollbacks = Annotated[RollbacksModel, Depends(get_rollbacks)]


def _one_value_each(request: Request) -> None:
    """A query parameter of the route's given twice (``?status=open&status=resolved``): the
    route takes one value of each, and which was meant cannot be told, so it is refused
    (422). Parameters the route does not take are ignored, repeated or not."""
    query = request.query_params
    if len(query.multi_items()) == len(query):
        return
    route = request.scope["route"]  # the endpoint's own parameters (none come by a Depends)
    taken = {field.alias for field in route.dependant.query_params}
    repeated = sorted(key for key in query if key in taken and len(query.getlist(key)) > 1)
    if repeated:
        raise HTTPException(
            422,
            f"query parameter {', '.join(repeated)} is given more than once; give it once "
            "(it takes one value)",
        )


# On routers whose routes take query parameters.
OneValueEach = Depends(_one_value_each)


def cut_by_the_stop(detail: str) -> HTTPException:
    """The 503 of a request the server's stop cut short (its grace for requests ran out):
    the operator's stop, no incident; sent again once the service is back."""
    trace.get_current_span().set_attribute(NOT_AN_INCIDENT, "cut short by the stop")
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail, headers={"Retry-After": "5"})
