"""BackupManager: one restic repository, its snapshot list, retention, drills and rollbacks,
over a backend that knows how its state is copied and put back (see `backup.backend`).

The service builds one manager in its lifespan and reaches every backup feature through it.
Every restic command that takes a repository lock (backup, forget, prune, check, restore for a
test rollback or a drill, rollback) runs under one lock, so that a scheduled job makes a
person's request wait instead of fail; forget, prune and check also wait for the off-host copy
(`sharing_repository`). Every write goes only into the repository the backups went to so far
(`backup.identity`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from backup.backend import BackendConfig, BackupRequest, PauseWriters, Reopen, RollbackRequest
from backup.emergency import EmergencyCooldown
from backup.errors import (
    BackupError,
    Interrupted,
    RepositoryReadOnly,
    ResticCommandFailed,
    RollbackFailed,
    RollbackRefused,
    SnapshotNotFound,
    UnknownComponent,
)
from backup.events import (
    BackupEvent,
    BackupFailed,
    BackupSucceeded,
    DrillFinished,
    EventPublisher,
    Listener,
    RollbackFinished,
    SnapshotsForgotten,
)
from backup.identity import RepositoryIdentity
from backup.index import SnapshotIndex, forget_unretained
from backup.inputs import validate_reason
from backup.lineage import RollbackMark, Swapped, mark_from_restic, record_rollback
from backup.models import (
    BackupReason,
    BackupResult,
    BackupStatus,
    BackupSummary,
    CheckResult,
    DrillResult,
    FileVerification,
    ForgetResult,
    RollbackPreview,
    RollbackResult,
    Snapshot,
    SnapshotDetails,
    SnapshotFile,
)
from backup.repository import RepositoryConfig, open_identified
from backup.restic import ProgressCallback, Restic
from backup.sharing import RepositorySharing

log = logging.getLogger(__name__)


class BackupManager:
    def __init__(
        self,
        restic: Restic,
        config: BackendConfig,
        identity: RepositoryIdentity | None = None,
        *,
        emergency_cooldown: EmergencyCooldown | None = None,
        shutdown_timeout_seconds: float = 30.0,
        turn_lock: Callable[[bool], AbstractAsyncContextManager[object]] | None = None,
    ) -> None:
        """``emergency_cooldown``: one the caller keeps across restarts; else one of 300 s
        that lives as long as this manager. ``turn_lock``: other processes' turns on the
        repository (`RepositoryConfig.turn_lock`)."""
        self.restic = restic
        # The repository every write must go to; without one given, the one first seen.
        self.identity = identity
        self.config = config
        self.emergency_cooldown = emergency_cooldown or EmergencyCooldown(300.0)
        self.shutdown_timeout_seconds = shutdown_timeout_seconds
        self.events = EventPublisher()
        self.index = SnapshotIndex()
        self.backend = config.build(restic, self.index, self.events)
        self.last_success: dict[str, datetime] = {}
        self._summaries: dict[str, BackupSummary] = {}  # of the snapshots made here, by short id
        self._last_verified: datetime | None = None
        self._lock = asyncio.Lock()
        # restic's lock rule within this process: forget, prune and check use the
        # repository alone, and other restic processes of ours (the off-host copy) share it.
        self._sharing = RepositorySharing()
        self._turn_lock = turn_lock
        self.events.subscribe(self._remember)

    @classmethod
    async def open(
        cls,
        repository: RepositoryConfig,
        config: BackendConfig,
        *,
        may_create: bool = False,
        owns_state: bool = True,
        **options: Any,
    ) -> BackupManager:
        """Reach the repository (creating it only with `may_create`, see
        `backup.repository.open_identified`) and load the list; the owner of the state also
        clears what an interrupted run left behind (another process may be running one)."""
        identity = await open_identified(repository, may_create=may_create)
        manager = cls(identity.restic, config, identity, turn_lock=repository.turn_lock, **options)
        if owns_state:
            await manager.backend.start()
        await manager.refresh()
        return manager

    # Status and events -------------------------------------------------------------------

    def status(self) -> BackupStatus:
        return BackupStatus(dict(self.last_success), len(self.index), self._last_verified)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self.events.subscribe(listener)

    def _remember(self, event: BackupEvent) -> None:
        if isinstance(event, BackupSucceeded):
            result = event.result
            for component in result.components:
                self.last_success[component] = result.started_at
            if result.snapshot_id and result.summary:
                self._summaries[result.snapshot_id[:8]] = result.summary

    # Backups -----------------------------------------------------------------------------

    async def verify_repository(self, *, thorough: bool = False) -> str:
        """The repository's id, after checking it is still the one the backups went to;
        raises RepositoryMissing or RepositoryReplaced otherwise. `thorough` asks restic
        even where a cheaper sign would do (see `RepositoryIdentity`)."""
        if self.identity is None:
            self.identity = await RepositoryIdentity.first_seen(self.restic)
        return await self.identity.verify(thorough=thorough)

    async def create(
        self,
        components: Sequence[str] | None = None,
        reason: str = BackupReason.MANUAL,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        skip_unchanged: bool = True,
    ) -> BackupResult:
        """Back up `components` (None: the full system). The reason is tagged as given: one
        of `BackupReason` or an operator's own word (`before-upgrade`). An emergency backup
        within the cooldown of the last one returns that one, marked coalesced. Unchanged
        components are skipped unless `skip_unchanged` is False (a backup a person asked for,
        whose reason tag must exist)."""
        reason = validate_reason(str(reason))
        names = self._check_components(components)
        async with self._turn():
            if reason == BackupReason.EMERGENCY and (
                previous := self.emergency_cooldown.coalesced()
            ):
                return previous
            try:
                await self.verify_repository()
            except BackupError as exc:
                failed = BackupFailed(tuple(names), reason, exc.label, str(exc), 0.0)
                self.events.publish(failed)
                raise
            full = components is None
            result = await self.backend.take(
                BackupRequest(names, reason, full, timeout, on_progress, skip_unchanged)
            )
            if reason == BackupReason.EMERGENCY:
                self.emergency_cooldown.started(result)
            return result

    async def shutdown_backup(self, timeout: float | None = None) -> BackupResult:
        """The final full backup when the service stops, bounded by `timeout` seconds."""
        limit = self.shutdown_timeout_seconds if timeout is None else timeout
        result = await self.create(None, BackupReason.SHUTDOWN, timeout=limit)
        if result.snapshot_id is None:
            log.info("final backup: nothing changed since the last snapshot; none taken")
        return result

    def _check_components(self, components: Sequence[str] | None) -> list[str]:
        known = self.backend.components
        if components is None:
            return list(known)
        unknown = [c for c in components if c not in known]
        if unknown or not components:
            raise UnknownComponent(
                f"unknown component(s) {', '.join(unknown) or '(none given)'}: choose from "
                f"{', '.join(known)}"
            )
        return list(dict.fromkeys(components))

    # The snapshot list -------------------------------------------------------------------

    def list(self) -> list[Snapshot]:
        """The backend's snapshots, newest first, from memory."""
        return self.index.all()

    async def refresh(self) -> list[Snapshot]:
        """Re-read the list from `restic snapshots`: other processes and replicas change it."""
        await self.verify_repository()
        since = self.index.reading()  # a backup made while the list is read stays in it
        entries = await self.restic.snapshots()  # the backend's, and the rollbacks' records
        ours = [e for e in entries if self.backend.tag in (e.get("tags") or ())]
        self.index.replace(ours, [m for m in map(mark_from_restic, entries) if m], since)
        return self.index.all()

    async def find(self, snapshot_id: str) -> Snapshot:
        """The snapshot by id or unique prefix; an id the list does not know yet is looked
        for once more in a fresh list before it is called unknown."""
        try:
            return self.index.get(snapshot_id)
        except SnapshotNotFound:
            await self.refresh()
            return self.index.get(snapshot_id)

    def newest_snapshot_before(
        self, moment: datetime, parts: Sequence[str] = (), also: Sequence[RollbackMark] = ()
    ) -> Snapshot | None:
        """`SnapshotIndex.newest_before`: as the live state had ``parts``, before ``moment``."""
        return self.index.newest_before(moment, parts, also)

    async def details(self, snapshot_id: str) -> SnapshotDetails:
        snapshot = await self.find(snapshot_id)
        nodes = await self.restic.ls(snapshot.id)
        files = tuple(
            SnapshotFile(str(n.get("path", n.get("name"))), int(n.get("size", 0)))
            for n in nodes
            if n.get("type") == "file"
        )
        summary = self._summaries.get(snapshot.id[:8])
        added = summary.data_added if summary else None
        return SnapshotDetails(snapshot, files, sum(f.size for f in files), added)

    # Retention and health ----------------------------------------------------------------

    async def forget(self, keep_last: int = 50) -> ForgetResult:
        """Forget all but the newest ``keep_last`` snapshots of each component (`retained`);
        their data is freed by `prune`."""
        async with self._turn(exclusive=True):
            await self.verify_repository()
            kept, removed = await forget_unretained(self.restic, self.backend.tag, keep_last)
            self.index.replace(kept, forgotten=removed)
        if removed:
            self.events.publish(SnapshotsForgotten(removed))
        return ForgetResult(tuple(entry["id"] for entry in kept), removed)

    async def prune(self) -> None:
        async with self._turn(exclusive=True):
            await self.verify_repository()
            await self.restic.prune()

    async def check(self, *, read_data: bool = False) -> CheckResult:
        async with self._turn(exclusive=True):
            # A repository that is gone or replaced fails as the health check tells it (the
            # same error, so the same incident), not as restic's bare "no repository".
            await self.verify_repository(thorough=True)
            try:
                output = await self.restic.check(read_data=read_data)
            except ResticCommandFailed as exc:
                return CheckResult(ok=False, output_tail=str(exc))
        return CheckResult(ok=True, output_tail=output.strip()[-400:])

    async def verify_latest(self) -> DrillResult:
        """Restore drill: the newest snapshots of every component restored into scratch and
        verified, as a test rollback restores and verifies them."""
        started, files = time.monotonic(), list[FileVerification]()
        plan = self.backend.drill_plan(self.index)
        for snapshot, names in plan:
            try:
                async with self._turn():
                    # Verified only: the rows' comparison with the live state is not read.
                    preview = await self.backend.preview(snapshot, names, rows=False)
            except Interrupted:
                raise  # stopped, not a verdict on the snapshot
            except BackupError as exc:
                files += [FileVerification(name, str(exc)[:200], None, 0) for name in names]
                continue
            files += [c.verification for c in preview.components]
        newest = max(plan, key=lambda step: step[0].time)[0]
        result = DrillResult(
            newest.id,
            datetime.now(UTC),
            time.monotonic() - started,
            (*files,),
            {name: snapshot.id for snapshot, names in plan for name in names},
        )
        if result.ok:
            self._last_verified = result.verified_at
        self.events.publish(DrillFinished(result))
        return result

    @asynccontextmanager
    async def sharing_repository(self) -> AsyncIterator[None]:
        """Held by another restic process of this service that reads the repository (the
        off-host copy): forget, prune and check wait for it to end, and it for them."""
        async with self._sharing.shared(), self._others_turn(exclusive=False):
            yield

    @asynccontextmanager
    async def _turn(self, *, exclusive: bool = False) -> AsyncIterator[None]:
        """This process's turn on the repository for one restic command that locks it: one
        at a time here, forget, prune and check (`exclusive`) also after the off-host copy,
        and in turn with the other processes that share the repository."""
        async with self._lock, contextlib.AsyncExitStack() as held:
            if exclusive:
                await held.enter_async_context(self._sharing.exclusive())
            await held.enter_async_context(self._others_turn(exclusive=exclusive))
            yield

    @asynccontextmanager
    async def _others_turn(self, *, exclusive: bool) -> AsyncIterator[None]:
        if self._turn_lock is None:
            yield
            return
        async with self._turn_lock(exclusive):
            yield

    # Rollback ----------------------------------------------------------------------------

    async def rollback_components(
        self, snapshot_id: str, components: Sequence[str] | None = None
    ) -> list[str]:
        """What a rollback to `snapshot_id` restores (None: the whole state it can)."""
        return self.backend.rollback_components(await self.find(snapshot_id), components)

    async def test_rollback(
        self, snapshot_id: str, components: Sequence[str] | None = None
    ) -> RollbackPreview:
        # Read back first (one `restic snapshots`, beside a restore): a snapshot this process
        # made is listed at the time its backup began until then, restic keeps its own a
        # moment later, and a preview says what `ers backup --offline test-rollback` says.
        await self.refresh()
        snapshot = await self.find(snapshot_id)
        names = self.backend.rollback_components(snapshot, components)
        async with self._turn():
            return await self.backend.preview(snapshot, names)

    async def rollback(
        self,
        snapshot_id: str,
        components: Sequence[str] | None,
        reason: str,
        pause_writers: PauseWriters,
        reopen: Reopen,
        on_progress: ProgressCallback | None = None,
        swapped: Swapped | None = None,
    ) -> RollbackResult:
        """Put `components` back as they were in the snapshot, after a safety snapshot of
        their current state; RollbackFailed names the step and leaves the live state alone.
        ``swapped`` is awaited once the swap has committed (`record_rollback`)."""
        async with self._turn():
            await self.verify_repository()
            if problem := self.restic.read_only():  # no safety snapshot: refused at once
                raise RepositoryReadOnly(f"{problem}, then try again")  # as restic's refusal
            snapshot = await self.find(snapshot_id)
            names = self.backend.rollback_components(snapshot, components)
            started = time.monotonic()
            try:
                result = await self.backend.apply(
                    RollbackRequest(snapshot, names, reason, pause_writers, reopen, on_progress)
                )
            except RollbackRefused:
                raise  # turned away (it says why), with nothing changed: no failed rollback
            except BackupError as exc:
                self.events.publish(
                    RollbackFinished(snapshot.id, tuple(names), time.monotonic() - started)
                )
                if isinstance(exc, RollbackFailed) and isinstance(exc.cause, SnapshotNotFound):
                    # Forgotten behind the list's back (restic run by hand): the list is read
                    # afresh, so this and every retry get the "not found" a fresh list gives.
                    try:
                        await self.refresh()
                    except BackupError as unread:  # the answer stays: the snapshot is gone
                        log.warning("the snapshot list could not be read again: %s", unread)
                    raise SnapshotNotFound(
                        f"snapshot {snapshot.short_id} is gone from the repository (forgotten "
                        "since the list was read); the live data was left unchanged: pick one "
                        "of `ers backup list --refresh`"
                    ) from None
                raise
            mark, result = await record_rollback(self.restic, result, swapped)  # swap committed
        if mark is not None:  # not written: the caller's trail stands for it
            self.index.add_mark(mark)
        self.events.publish(
            RollbackFinished(snapshot.id, tuple(names), result.duration_seconds, result=result)
        )
        return result
