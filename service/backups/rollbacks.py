"""Rollbacks named by an incident: the newest snapshot taken before it opened, the
automatic rollback the responder runs, and the record of an operator's rollback on the
incident's timeline and in the audit trail."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from backup import RollbackRefused, RollbackResult, SnapshotNotFound
from backup.lineage import stop_asked
from backup.locks import process_is_running
from service.backups.replies import iso
from service.backups.service import ROLLBACK_COMPONENTS, BackupService
from service.fleet.presence import process_gone
from service.incidents.alert_payload import rollback_refusal
from service.incidents.audit import ROLLBACK_STARTED, AuditLog, rollback_run, started_here
from service.incidents.model import IncidentNotFound
from service.incidents.recovery import ACTOR as ALERTMANAGER
from service.incidents.responder import ResponseContext
from service.incidents.store import IncidentStore
from service.stores.session_names import presence_name, sessions_named
from service.stores.sql import Statements
from service.tasks import run_in_background

log = logging.getLogger("ers.backups")

# How often a running replica on PostgreSQL looks in the shared trail for a rollback whose
# process is gone: as often as replicas stamp their presence (``service.fleet.presence``).
LOOK_EVERY_S = 5.0


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

    async def snapshot_before(self, incident_id: str | None, components: Sequence[str]) -> str:
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
        snapshot_id = self.backups.newest_before(moment, components)
        if snapshot_id is None:
            fewer = "; name fewer components to roll back" if len(components) > 1 else ""
            raise SnapshotNotFound(
                f"no snapshot taken before {incident_id} opened ({moment:%c} UTC) "
                f"holds {', '.join(components)} as the live state had them{fewer}"
            )
        return snapshot_id

    async def automatic(self, context: ResponseContext) -> str:
        """The responder's rollback to before the incident, in words for its timeline: of
        the whole state, or of the one component an alert names (its `component` label)."""
        incident_id, backups = context.incident_id, self.backups
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
                result = await backups.rollback(snapshot_id, [component], reason)
                done.append(f"{component} to {result.snapshot_id[:8]}")
                done += result.notes
                await asyncio.to_thread(self._note_done, incident_id, component, result)
            return f"rolled back {', '.join(done)}"
        snapshot_id = await self.snapshot_before(incident_id, components)
        whole = None if components == ROLLBACK_COMPONENTS else list(components)
        result = await backups.rollback(snapshot_id, whole, reason)
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
            log.warning("the outcome of rollback %s is in the audit trail now", done.run)

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
            words = f"rolled back to {result.snapshot_id}" if result else f"failed: {error}"
            with contextlib.suppress(LookupError):
                rollbacks.incidents.add_timeline(
                    request.beforeIncident,
                    "note",
                    f"rollback {words}",
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


INTERRUPTED = (
    "the process running it stopped before its outcome was written (a kill or a crash, or a "
    "trail it could not write to until it stopped): each component is wholly the state before "
    "it or wholly the snapshot's (on SQLite a swap it had begun is undone at the next start: "
    "rollback_undone; on PostgreSQL a swap that committed stays: `ers backup test-rollback` "
    "on the snapshot shows which, and an automatic rollback notes on its incident's timeline "
    "each component it rolled back); its safety snapshot, if taken, is tagged reason:pre-rollback"
)


async def record_interrupted_at_start(audit: AuditLog, incidents: IncidentStore | None) -> None:
    """``record_interrupted`` at the service's start, before anything can roll back."""
    await asyncio.to_thread(record_interrupted, audit, incidents)


def keep_looking(
    stack: AsyncExitStack,
    audit: AuditLog,
    incidents: IncidentStore | None,
    every_s: float = LOOK_EVERY_S,
) -> None:
    """On PostgreSQL, ``record_interrupted`` every ``every_s`` while the trail holds a
    rollback with no outcome: a replica killed in the middle of one (its rollback lock
    freed, the writes that waited on it let through) is recorded by the replicas still
    running, as a start records it, once the fleet's database no longer sees it (its
    session gone, its presence stamp older than ``SEEN_WITHIN_S``); so is a replica killed
    just before this start, still seen then. A rollback this process started is left
    alone. The looks stop when ``stack`` unwinds to here, so it is
    registered after what closes the trail's database."""
    if not audit.shared:
        return

    async def looking() -> None:
        while True:
            await asyncio.sleep(every_s)
            if await asyncio.to_thread(_has_unfinished, audit):
                await asyncio.to_thread(record_interrupted, audit, incidents)

    run_in_background(stack, looking(), "rollbacks-cut-off")


def _has_unfinished(audit: AuditLog) -> bool:
    """Whether the trail holds a rollback with no outcome; False while it cannot be read
    (the stores check says so, and this look comes again)."""
    try:
        return bool(audit.unfinished_rollbacks())
    except Exception as exc:
        log.debug("could not read the audit trail's rollbacks: %s", exc)
        return False


def record_interrupted(
    audit: AuditLog, incidents: IncidentStore | None = None
) -> list[dict[str, object]]:
    """Blocking; at the service's start, before anything can roll back, and while it runs
    (``keep_looking``). Each rollback in the trail with no outcome whose process no longer
    runs gets the entry ``rollback_interrupted`` (actor ``ers``) naming it; returns those
    entries' details. A process of this host is looked for by its pid, and one with this
    process's pid counts as gone unless this process started the rollback
    (``started_here``): on a restart in a container, ERS has the same pid every time. On
    PostgreSQL, a process of another host is gone when the fleet's database has neither a
    session of it nor a recent presence stamp (``service.fleet.presence``); on SQLite only
    this host's rollbacks are in the trail. A rollback for an incident gets a note on its
    timeline too."""
    try:
        return _record_interrupted(audit, incidents)
    except Exception as exc:  # an unwritable trail, a database down: health says so
        log.warning("could not look for rollbacks cut off in the audit trail: %s", exc)
        return []


def _record_interrupted(
    audit: AuditLog, incidents: IncidentStore | None
) -> list[dict[str, object]]:
    host, pid = socket.gethostname(), os.getpid()

    def cut_off(db: Statements, entry: dict[str, Any]) -> dict[str, Any] | None:
        started = entry["detail"]
        of = int(started.get("pid") or 0)
        if started.get("host") == host:
            # On PostgreSQL the fleet's database has a say too: hosts may share a hostname
            # (and containers pid 1), and a pid not running here may run there.
            if of != pid and (
                process_is_running(of) or (audit.shared and not process_gone(db, host, of))
            ):
                return None
            if of == pid and started_here(started.get("run")):
                return None  # this process's own, running
            if of == pid and audit.shared and _name_shared(db):
                return None  # another process runs under this one's name
        elif not (audit.shared and process_gone(db, str(started.get("host")), of)):
            return None
        return {
            key: started.get(key)
            for key in ("run", "backupId", "components", "beforeIncident", "reason", "host", "pid")
        } | {"startedBy": entry["actor"], "startedAt": _iso(entry["at"]), "outcome": INTERRUPTED}

    recorded = audit.record_cut_off(cut_off)
    for detail in recorded:
        before = detail.get("beforeIncident")
        target = detail.get("backupId") or f"the snapshot before {before}"
        log.warning(
            "the audit trail's rollback %s to %s (started by %s on %s) has no outcome: the "
            "process running it stopped first; recorded as rollback_interrupted",
            detail["run"],
            target,
            detail["startedBy"],
            detail["host"],
        )
        if before and incidents is not None:
            note = f"rollback cut off: {INTERRUPTED}"
            with contextlib.suppress(LookupError):
                incidents.add_timeline(before, "note", note, "ers", {"run": detail["run"]})
    return recorded


def _name_shared(db: Statements) -> bool:
    """Whether a session besides this process's presence carries its name: a replica of
    another host with this hostname and pid, or the session of this process's predecessor
    the server has yet to drop (looked at again every ``LOOK_EVERY_S``)."""
    sessions = db.execute(f"SELECT {sessions_named('?')} AS n", (presence_name(),))
    return int(sessions.fetchone()["n"]) > 1


def _iso(at: object) -> object:
    """The trail's own time of an entry (seconds since the epoch), as every other time."""
    if isinstance(at, int | float):
        return iso(datetime.fromtimestamp(at, UTC))
    return at
