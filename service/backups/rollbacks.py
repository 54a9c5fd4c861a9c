"""Rollbacks named by an incident: the newest snapshot taken before it opened, the
automatic rollback the responder runs, and the record of an operator's rollback on the
incident's timeline and in the audit trail."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from backup import BackupError, RollbackRefused, RollbackResult, SnapshotNotFound
from backup.lineage import RollbackMark, Swapped, record_late, stop_asked, unrecorded
from service.backups.service import ROLLBACK_COMPONENTS, BackupService
from service.incidents.alert_payload import rollback_refusal
from service.incidents.audit import (
    ROLLBACK_STARTED,
    ROLLBACK_SWAPPED,
    AuditLog,
    rollback_run,
    swap_detail,
)
from service.incidents.model import IncidentNotFound
from service.incidents.recovery import ACTOR as ALERTMANAGER
from service.incidents.responder import ResponseContext
from service.incidents.store import IncidentStore

log = logging.getLogger("ers.backups")
# How long choosing a snapshot before an incident may spend writing rollbacks' records.
RECORDING_S = 15.0


def _of(mark: RollbackMark) -> str:
    return f"the rollback to {mark.restored[:8]} of {', '.join(mark.components)}"


class RollbackRequest(Protocol):
    backupId: str | None
    beforeIncident: str | None
    reason: str
    components: list[str] | None


def alert_components(context: ResponseContext) -> tuple[str, ...]:
    """What a rollback restores: the component an alert names, else the whole state. An
    alert naming something else (an agent, the incidents) is refused: rolling back all of the
    state for it would undo the writes of components it never named."""
    if context.source != ALERTMANAGER or context.component == "ers":
        return ROLLBACK_COMPONENTS
    if refused := rollback_refusal(context.component):
        raise RollbackRefused(refused)
    return (context.component,)


class Rollbacks:
    def __init__(self, backups: BackupService, incidents: IncidentStore, audit: AuditLog) -> None:
        self.backups = backups
        self.incidents = incidents
        self.audit = audit
        self._unwritten: list[_Outcome] = []

    async def snapshot_before(
        self, incident_id: str | None, components: Sequence[str], write: bool = True
    ) -> str:
        """The newest snapshot taken before the incident opened (its first failure, or the
        last reopening: a snapshot taken after an episode was fixed holds that fix) that holds
        all of ``components``: one point in time for all of them, not whatever snapshot came
        last (with SQLite, a scheduled backup or a safety snapshot may hold one component)."""
        if incident_id is None:
            raise SnapshotNotFound("no incident named")
        try:
            incident = await asyncio.to_thread(self.incidents.get, incident_id)
        except IncidentNotFound as exc:
            raise SnapshotNotFound(str(exc)) from None
        moment = datetime.fromtimestamp(incident.opened_at, UTC)
        unwritten = await self.swaps_recorded(write)
        snapshot_id = self.backups.newest_before(moment, components, unwritten)
        if snapshot_id is None:
            fewer = "; name fewer components to roll back" if len(components) > 1 else ""
            raise SnapshotNotFound(
                f"no snapshot taken before {incident_id} opened ({moment:%c} UTC) "
                f"holds {', '.join(components)} as the live state had them{fewer}"
            )
        return snapshot_id

    async def swaps_recorded(self, write: bool = True) -> list[RollbackMark]:
        """Each swap the trail tells of has its rollback's record in the repository before a
        snapshot "before" an incident is chosen, lest the choice fall on one holding a state
        a rollback put aside: a record not written (a kill or a stop between the swap and
        it, a repository away then) is written now (with ``write``: not for a test's
        preview), within ``RECORDING_S`` in all. Returns those still unwritten, which count
        in this choice all the same."""
        manager = self.backups.require()
        swaps = await self._swaps()
        if not unrecorded(swaps, manager.index.marks()):
            return []
        try:
            async with asyncio.timeout(RECORDING_S):
                await manager.refresh()  # another process may have written some
                for mark in unrecorded(swaps, manager.index.marks()) if write else ():
                    await record_late(manager.restic, mark, swaps[mark].get("safetyBackupId"))
                    manager.index.add_mark(mark)
                    log.warning("%s had no record in the repository: written now", _of(mark))
        except (BackupError, OSError, TimeoutError) as exc:
            why = str(exc) or f"not done within {RECORDING_S:g} s"
            log.warning("rollbacks' records not written (%s): counted all the same", why)
        return unrecorded(swaps, manager.index.marks())

    async def unwritten(self) -> list[RollbackMark]:
        """The rollbacks the trail tells of whose records the repository lacks (for now)."""
        return unrecorded(await self._swaps(), self.backups.require().index.marks())

    async def _swaps(self) -> dict[RollbackMark, dict[str, Any]]:
        try:
            return await asyncio.to_thread(self.audit.swaps)
        except Exception as exc:  # the trail's database away: the stores check says so
            log.warning("the audit trail's rollbacks could not be read: %s", exc)
            return {}

    def swapped(self, run: str | None, actor: str) -> Swapped:
        """The trail's word that the swap of the rollback of ``run`` has committed, which
        tells one cut off before its outcome as done (``record_interrupted``)."""

        async def said(result: RollbackResult) -> None:
            if run is not None:
                detail = swap_detail(run, result)
                await asyncio.to_thread(self.audit.record, actor, ROLLBACK_SWAPPED, detail)

        return said

    async def automatic(self, context: ResponseContext, run: str) -> str:
        """The responder's rollback to before the incident (the trail's ``run``), in words
        for its timeline: of the whole state, or of the one component an alert names (its
        `component` label)."""
        incident_id, backups = context.incident_id, self.backups
        swapped = self.swapped(run, context.source)
        reason = f"automatic rollback for {incident_id}"
        components = alert_components(context)
        if backups.one_component_per_snapshot:
            # Each component from its own newest snapshot before the incident.
            # Each swap commits on its own: one noted as it is done tells, after a kill cuts
            # the rest off, which components are rolled back and which are as they were.
            done: list[str] = []
            for component in components:
                if done and stop_asked():  # while the last one's record was written
                    raise asyncio.CancelledError  # the rest stay as they are
                snapshot_id = await self.snapshot_before(incident_id, [component])
                result = await backups.rollback(snapshot_id, [component], reason, swapped)
                done.append(f"{component} to {result.snapshot_id[:8]}")
                done += result.notes
                await asyncio.to_thread(self._note_done, incident_id, component, result)
            return f"rolled back {', '.join(done)}"
        snapshot_id = await self.snapshot_before(incident_id, components)
        whole = None if components == ROLLBACK_COMPONENTS else list(components)
        result = await backups.rollback(snapshot_id, whole, reason, swapped)
        notes = "".join(f"; {note}" for note in result.notes)
        named = "" if whole is None else f" {', '.join(components)}"
        return (
            f"rolled back{named} to {result.snapshot_id}; safety snapshot "
            f"{result.safety_snapshot_id}"
            f"{notes}"
        )

    def _note_done(self, incident_id: str, component: str, result: RollbackResult) -> None:
        note = (
            f"rollback: {component} rolled back to {result.snapshot_id[:8]} (its state before in"
            f" safety snapshot {result.safety_snapshot_id[:8]})"
        )
        try:
            self.incidents.add_timeline(incident_id, "note", note, "ers", {"component": component})
        except Exception as exc:  # the rollback goes on; its outcome names every component
            log.warning(
                "could not note on %s that %s is rolled back: %s", incident_id, component, exc
            )

    def record_start(self, request: RollbackRequest, snapshot_id: str) -> str | None:
        """Blocking: the trail's entry before the rollback begins, so that one a kill cuts
        off (before its outcome is written) is in the trail all the same. Not written (a full
        disk): logged, and the rollback goes on; its outcome is told and recorded after.
        Returns the run its outcome names (`record`), None when it was not written."""
        run = rollback_run()
        detail = {
            "backupId": snapshot_id,
            "beforeIncident": request.beforeIncident,
            "reason": request.reason,
            "components": request.components,
        }
        try:
            self.audit.record("admin", ROLLBACK_STARTED, detail | run)
        except Exception:
            log.exception("could not record the rollback's start in the audit trail")
            return None
        return str(run["run"])

    def record(
        self,
        request: RollbackRequest,
        result: RollbackResult | None,
        error: str | None,
        run: str | None = None,
    ) -> str | None:
        """Blocking (the incident store and the audit file): call off the event loop. A
        record that cannot be written (a full disk, the database down) must not hide what the
        rollback did: it is logged, kept to be written once the trail takes it
        (``write_unwritten``), and the reason is returned to be told with the outcome."""
        pending = _Outcome(request, result, error, run)
        try:
            pending.write(self)
        except Exception as exc:
            log.exception("could not record the rollback in the audit trail")
            self._unwritten.append(pending)
            return (
                f"the rollback is not in the audit trail yet: writing it failed ({exc}); it is"
                " written once the trail can be written again"
            )
        return None

    def write_unwritten(self) -> None:
        """Blocking: write the outcomes the trail could not take, oldest first; at shutdown
        too, before the stores close."""
        while self._unwritten:
            try:
                self._unwritten[0].write(self)
            except Exception as exc:
                log.warning("a rollback's outcome is still not in the audit trail: %s", exc)
                return
            done = self._unwritten.pop(0)
            # With no run when its start could not be written either: named by its target.
            request = done.request
            named = done.run or (
                f"to {request.backupId}" if request.backupId else f"before {request.beforeIncident}"
            )
            log.warning("the outcome of rollback %s is in the audit trail now", named)

    async def run_retries(self, every_s: float = 5.0) -> None:
        while True:
            await asyncio.sleep(every_s)
            if self._unwritten:
                await asyncio.to_thread(self.write_unwritten)


@dataclass(eq=False)
class _Outcome:
    """A rollback's outcome on its incident's timeline and in the audit trail; each written
    once, also when the second fails and the outcome is written again later."""

    request: RollbackRequest
    result: RollbackResult | None
    error: str | None
    run: str | None
    noted: bool = False

    def write(self, rollbacks: Rollbacks) -> None:
        request, result, error = self.request, self.result, self.error
        if request.beforeIncident and not self.noted:
            words = (
                f"{', '.join(result.components)} rolled back to {result.snapshot_id[:8]} (the"
                f" state before in safety snapshot {str(result.safety_snapshot_id)[:8]})"
                if result
                else f"failed: {error}"
            )
            with contextlib.suppress(LookupError):
                rollbacks.incidents.add_timeline(
                    request.beforeIncident,
                    "note",
                    f"rollback: {words}",
                    "admin",
                    {"reason": request.reason},
                )
        self.noted = True
        rollbacks.audit.record(
            "admin",
            "rollback",
            {
                "backupId": result.snapshot_id if result else request.backupId,
                "beforeIncident": request.beforeIncident,
                "reason": request.reason,
                # What it rolled back (all the snapshot holds when none were named).
                "components": list(result.components) if result else request.components,
                "safetyBackupId": result.safety_snapshot_id if result else None,
                "error": error,
                "run": self.run,
            },
        )
