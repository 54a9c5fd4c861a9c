"""Backups, test rollbacks and rollbacks (the seed's endpoints)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.routing import APIRoute
from opentelemetry import trace
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from backup import (
    BackupError,
    InvalidBackupReason,
    InvalidSnapshotId,
    RollbackFailed,
    RollbackRefused,
    SnapshotNotFound,
    validate_reason,
    validate_snapshot_id,
)
from service.backups.replies import (
    created_reply,
    details_reply,
    init_reply,
    listed,
    preview_reply,
    rollback_reply,
)
from service.backups.service import ROLLBACK_COMPONENTS, BackupService, BackupsUnavailable
from service.health.backup_checks import reported_failure, reported_operation_failure
from service.incidents.model import INCIDENT_ID_PATTERN
from service.web.auth import AdminAuth, AdminRead
from service.web.deps import Backups, Rollbacks, Settings, cut_by_the_stop
from service.web.json_route import JsonRoute
from service.web.openapi import errors
from service.web.routes.json_types import Confirmation, Reason
from telemetry.classifier import NOT_AN_INCIDENT
from telemetry.exception_events import record_failure

router = APIRouter(
    route_class=JsonRoute, prefix="/api/emergency", tags=["backups"], dependencies=[AdminRead]
)

BackupType = Literal[
    "full_system", "conversations", "budgets", "profiles", "system_state", "incidents"
]
RollbackComponent = Literal["conversations", "budgets", "profiles", "system_state"]


def _once_each(components: list[str]) -> list[str]:
    """A component named twice is rolled back once, and written once in the audit trail."""
    return list(dict.fromkeys(components))


def _not_incidents(components: object) -> object:
    """The incidents are backed up, never rolled back: said so, not as a word not allowed."""
    if isinstance(components, list) and "incidents" in components:
        raise ValueError(
            "the incidents are never rolled back (they hold what happened, the audit trail "
            "among it); name conversations, budgets, profiles or system_state"
        )
    return components


Components = (
    Annotated[
        list[RollbackComponent],
        Field(min_length=1, max_length=4),
        BeforeValidator(_not_incidents),
        AfterValidator(_once_each),
    ]
    | None
)
SNAPSHOT_ID = r"^[0-9a-f]{8,64}$"


def _checked_id(backup_id: str) -> str:
    try:
        return validate_snapshot_id(backup_id)
    except InvalidSnapshotId as exc:
        raise HTTPException(422, str(exc)) from None


def _snapshot_id(value: str) -> str:
    try:
        return validate_snapshot_id(value)
    except InvalidSnapshotId as exc:
        raise ValueError(str(exc)) from None


# A body's snapshot id gets the words a path's gets (an upper-case id is told its lower-case
# form); the pattern is for the OpenAPI schema only, so that pydantic's own words never show.
SnapshotId = Annotated[
    str, AfterValidator(_snapshot_id), WithJsonSchema({"type": "string", "pattern": SNAPSHOT_ID})
]


def _report(failure: BaseException | None) -> None:
    """Put the failure behind a 503 on the request's span, so the incident it makes is that
    failure's (the lost repository's, counted once more); a 503 with no failure behind it
    (backups off, or the repository still being reached) is no incident."""
    span = trace.get_current_span()
    if failure is None:
        span.set_attribute(NOT_AN_INCIDENT, "backups are not available yet")
        return
    span.set_attribute("ers.component", "backups")
    record_failure(span, failure)


def _fail(exc: Exception, operation: str) -> HTTPException:
    """The reply for a failed `operation` ("backup", "test rollback", ...), named in it."""
    if isinstance(exc, BackupsUnavailable):
        cause = exc.__cause__
        _report(None if cause is None else reported_failure(cause))
        return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc))
    if isinstance(exc, SnapshotNotFound):
        return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))
    if isinstance(exc, RollbackRefused):
        return HTTPException(status.HTTP_409_CONFLICT, str(exc))
    _report(reported_operation_failure(exc))
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"{operation} failed: {exc}")


@contextmanager
def _failures_as_http_errors(operation: str, cut: str = "") -> Iterator[None]:
    """A backup failure raised in the block becomes the error reply ``_fail`` makes of it; the
    server's stop cutting the block short (its grace for requests ran out) a 503 that says so,
    followed by ``cut``, not uvicorn's bare 500 and a traceback in the log."""
    try:
        yield
    except (BackupError, BackupsUnavailable) as exc:
        raise _fail(exc, operation) from None
    except asyncio.CancelledError:
        raise cut_by_the_stop(
            f"{operation} cut short: the service stopped before it finished{cut}; run it again"
            " once the service is back",
        ) from None


class CreateBackup(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Becomes the snapshot's `reason:` tag, so it must be a short, tag-safe word.
    reason: str = "manual"
    type: BackupType = "full_system"

    @field_validator("reason")
    @classmethod
    def _tag_safe(cls, value: str) -> str:
        try:
            return validate_reason(value)
        except InvalidBackupReason as exc:
            raise ValueError(str(exc)) from None


class TestRollback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backupId: SnapshotId | None = None
    beforeIncident: str | None = Field(None, pattern=INCIDENT_ID_PATTERN)
    components: Components = None

    @model_validator(mode="after")
    def _one_target(self) -> Any:
        if (self.backupId is None) == (self.beforeIncident is None):
            raise ValueError("give exactly one of backupId or beforeIncident")
        return self


class Rollback(TestRollback):
    confirm: Confirmation = False
    reason: Reason = Field(min_length=1, max_length=500)


@router.get("/backups")
async def list_backups(backups: Backups, rollbacks: Rollbacks) -> dict[str, Any]:
    with _failures_as_http_errors("listing the backups"):
        snapshots, marks = backups.require().list(), backups.require().index.marks()
    marks = [*marks, *await rollbacks.unwritten()]  # and those the trail alone tells of
    return {**await backups.summary(), "backups": listed(snapshots, marks)}


@router.post("/backups/refresh")
async def refresh_backups(who: AdminAuth, backups: Backups, rollbacks: Rollbacks) -> dict[str, Any]:
    """Re-read the snapshot list from the repository (snapshots made or forgotten elsewhere)."""
    with _failures_as_http_errors("refreshing the snapshot list"):
        snapshots, marks = await backups.refresh(), backups.require().index.marks()
    marks = [*marks, *await rollbacks.unwritten()]
    return {**await backups.summary(), "backups": listed(snapshots, marks)}


@router.post("/backups/init")
async def init_repository(who: AdminAuth, backups: Backups) -> dict[str, Any]:
    """Create the repository if there is none and make it the one the backups go to."""
    with _failures_as_http_errors("setting up the repository"):
        outcome = await backups.init()
    return init_reply(outcome)


@functools.cache
def _actions() -> frozenset[str]:
    """The POST routes beside /backups/{backup_id} (create, check, …), by their last
    segment: a GET of one of them is a GET of an action, not of a snapshot with that id."""
    base = f"{router.prefix}/backups/"
    return frozenset(
        route.path.removeprefix(base)
        for route in router.routes
        if isinstance(route, APIRoute) and route.path.startswith(base) and "POST" in route.methods
    )


@router.get("/backups/{backup_id}", responses=errors(404))
async def backup_details(backup_id: str, backups: Backups, request: Request) -> dict[str, Any]:
    if backup_id in _actions():  # a GET of an action, not of a snapshot with that id
        raise HTTPException(
            405, f"{request.url.path} does not take GET: use POST", headers={"Allow": "POST"}
        )
    snapshot_id = _checked_id(backup_id)
    with _failures_as_http_errors("reading the snapshot"):
        details = await backups.require().details(snapshot_id)
    return details_reply(details)


@router.post("/backups/create")
async def create_backup(body: CreateBackup, who: AdminAuth, backups: Backups) -> dict[str, Any]:
    components = None if body.type == "full_system" else [body.type]
    cut = " (a snapshot may have been made all the same: GET /api/emergency/backups lists it)"
    with _failures_as_http_errors("backup", cut):
        # Asked for by a person: a snapshot with its reason even when nothing changed.
        result = await backups.create(components, body.reason, skip_unchanged=False)
    return created_reply(result, body.reason, body.type)


def one_component_before_an_incident(
    snapshot_id: str | None, components: list[str] | None, backups: BackupService
) -> None:
    """On PostgreSQL a rollback to before an incident names one component, and so does its
    test: the test answered 404 "no snapshot ... name fewer components" where the rollback
    answered this 400."""
    one_each = backups.one_component_per_snapshot
    if snapshot_id is None and one_each and (components is None or len(components) != 1):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            "with the state on PostgreSQL each component has snapshots of its own: "
            'name one component in "components" to roll it back to before the incident',
        )


@router.post("/backups/test-rollback", responses=errors(400, 404, 409))
async def test_rollback(
    body: TestRollback, who: AdminAuth, backups: Backups, rollbacks: Rollbacks
) -> dict[str, Any]:
    with _failures_as_http_errors("test rollback"):
        components = list(body.components) if body.components else None
        one_component_before_an_incident(body.backupId, components, backups)
        # The snapshot a rollback before the incident would take, previewed before it runs
        # (writing nothing: the rollbacks' records it lacks count all the same).
        snapshot_id = body.backupId or await rollbacks.snapshot_before(
            body.beforeIncident, components or ROLLBACK_COMPONENTS, write=False
        )
        preview = await backups.require().test_rollback(snapshot_id, components)
    return preview_reply(preview)


@router.post("/rollback", responses=errors(400, 404, 409))
async def rollback(
    body: Rollback,
    who: AdminAuth,
    settings: Settings,
    rollbacks: Rollbacks,
    backups: Backups,
) -> dict[str, Any]:
    if not body.confirm:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            'a rollback replaces live state: send "confirm": true to go ahead '
            "(try /api/emergency/backups/test-rollback first)",
        )
    if not settings.emergency_rollback_enabled:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            "emergency rollback is disabled (emergency_rollback_enabled=false)",
        )
    started = None  # the run of the rollback's start in the trail: it gets its outcome too
    try:
        components = list(body.components) if body.components else None
        one_component_before_an_incident(body.backupId, components, backups)
        # Before an incident: one snapshot holding every component rolled back (all of them
        # when none is named), not merely the newest, which may hold another component.
        snapshot_id = body.backupId or await rollbacks.snapshot_before(
            body.beforeIncident, components or ROLLBACK_COMPONENTS
        )
        started = await asyncio.to_thread(rollbacks.record_start, body, snapshot_id)
        swapped = rollbacks.swapped(started, "admin")
        result = await backups.rollback(snapshot_id, components, body.reason, swapped)
    except RollbackFailed as exc:
        # The incident it opens names the failed step, not a bare 503; a repository that
        # refused the rollback counts in the repository check's instead.
        _report(reported_operation_failure(exc))
        unrecorded = await asyncio.to_thread(rollbacks.record, body, None, str(exc), started)
        # The failure's own words name its step and that the live data is as before.
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            str(exc) + (f"; {unrecorded}" if unrecorded else ""),
        ) from None
    except (BackupError, BackupsUnavailable) as exc:
        if (
            started is not None
        ):  # refused (an unknown snapshot, components it lacks): nothing was touched
            await asyncio.to_thread(rollbacks.record, body, None, f"refused: {exc}", started)
        raise _fail(exc, "rollback") from None
    except asyncio.CancelledError:
        # The server is stopping and its grace for requests ran out. Recorded at once, on
        # this thread: the store closes as soon as the shutdown goes on.
        cut = (
            "cut short: the service stopped before the rollback finished; live state as"
            " before it (a swap cut short is undone at the next start)"
        )
        unrecorded = rollbacks.record(body, None, cut, started)
        raise cut_by_the_stop(
            f"rollback {cut}; run it again once the service is back"
            + (f"; {unrecorded}" if unrecorded else "")
        ) from None
    if unrecorded := await asyncio.to_thread(rollbacks.record, body, result, None, started):
        result = dataclasses.replace(result, notes=(*result.notes, unrecorded))
    return rollback_reply(result, body.reason)


@router.post("/backups/check")
async def check_repository(who: AdminAuth, backups: Backups) -> dict[str, Any]:
    with _failures_as_http_errors("repository check"):
        result = await backups.check()
    return {"ok": result.ok, "output": result.output_tail}


@router.post("/backups/prune")
async def prune_repository(who: AdminAuth, backups: Backups) -> dict[str, Any]:
    with _failures_as_http_errors("prune"):
        manager = backups.require()
        forgotten = await manager.forget(keep_last=backups.settings.max_backups)
        await manager.prune()
    return {"kept": len(forgotten.kept), "removed": len(forgotten.removed)}
