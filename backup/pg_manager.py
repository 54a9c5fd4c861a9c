"""PgBackupManager: what `BackupManager` offers the service, for state on PostgreSQL.

The snapshots are `PgBackups`' (one per component schema); the list, retention, prune, check
and drills are restic's, as for files. A backup of several components is one snapshot each,
made side by side; a rollback names one snapshot and so restores one component.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from backup import rollback as rollback_flow
from backup.errors import (
    BackupError,
    ResticCommandFailed,
    RollbackRefused,
    SnapshotNotFound,
    UnknownComponent,
)
from backup.events import (
    BackupFailed,
    BackupSucceeded,
    DrillFinished,
    EventPublisher,
    Listener,
    RollbackFinished,
    SnapshotCountChanged,
)
from backup.manager import BackupStatus
from backup.models import (
    BackupReason,
    BackupResult,
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
from backup.pg import POSTGRES_TAG, PgBackupConfig, PgBackups
from backup.repository import RepositoryConfig, open_repository
from backup.restic import ProgressCallback


class PgBackupManager:
    def __init__(self, backups: PgBackups, *, emergency_cooldown_seconds: float = 300.0) -> None:
        self.backups = backups
        self.restic = backups.restic
        self.config = backups.config
        self.events = EventPublisher()
        self.emergency_cooldown_seconds = emergency_cooldown_seconds
        self._last_success: dict[str, datetime] = {}
        self._last_verified: datetime | None = None
        self._last_emergency: tuple[float, BackupResult] | None = None
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        repository: RepositoryConfig,
        database_url: str,
        config: PgBackupConfig,
        *,
        emergency_cooldown_seconds: float = 300.0,
    ) -> PgBackupManager:
        """Reach (and on first use initialise) the repository, load the list, and drop old
        schemas an interrupted rollback left behind."""
        backups = PgBackups(await open_repository(repository), database_url, config)
        manager = cls(backups, emergency_cooldown_seconds=emergency_cooldown_seconds)
        await manager.refresh()
        await backups.drop_leftovers()
        return manager

    def status(self) -> BackupStatus:
        return BackupStatus(dict(self._last_success), len(self.list()), self._last_verified)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self.events.subscribe(listener)

    # Backups ------------------------------------------------------------------------------

    async def create(
        self,
        components: Sequence[str] | None = None,
        reason: str = BackupReason.MANUAL,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> BackupResult:
        """A snapshot of each of `components` (None: every one); the result names the first
        snapshot and every component."""
        reason = BackupReason(reason).value
        names = list(components) if components is not None else list(self.config.schemas)
        async with self._lock:
            if reason == BackupReason.EMERGENCY and (previous := self._recent_emergency()):
                return dataclasses.replace(previous, coalesced=True)
            started = time.monotonic()
            try:
                results = await asyncio.wait_for(self.backups.backup(names, reason), timeout)
            except (BackupError, TimeoutError, ValueError) as exc:
                label = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
                message = str(exc) or f"no backup within {timeout} s"
                self.events.publish(
                    BackupFailed(tuple(names), reason, label, message, time.monotonic() - started)
                )
                if isinstance(exc, TimeoutError):
                    raise ResticCommandFailed(message) from None
                raise
            for result in results:
                self._last_success[result.components[0]] = result.started_at
                self.events.publish(BackupSucceeded(result))
            self.events.publish(SnapshotCountChanged(len(self.list())))
            result = dataclasses.replace(
                results[0],
                components=tuple(c for r in results for c in r.components),
                duration_seconds=time.monotonic() - started,
                total_size=sum(r.total_size for r in results),
            )
            if reason == BackupReason.EMERGENCY:
                self._last_emergency = (time.monotonic(), result)
            return result

    async def shutdown_backup(self, timeout: float | None = None) -> BackupResult:
        return await self.create(None, BackupReason.SHUTDOWN, timeout=timeout)

    def _recent_emergency(self) -> BackupResult | None:
        if self._last_emergency is None:
            return None
        at, result = self._last_emergency
        return result if time.monotonic() - at < self.emergency_cooldown_seconds else None

    # The snapshot list ---------------------------------------------------------------------

    def list(self) -> list[Snapshot]:
        return self.backups.list()

    async def refresh(self) -> list[Snapshot]:
        snapshots = await self.backups.refresh()
        self.events.publish(SnapshotCountChanged(len(snapshots)))
        return snapshots

    def newest_snapshot_before(
        self, moment: datetime | float, component: str | None = None
    ) -> Snapshot | None:
        if not isinstance(moment, datetime):
            moment = datetime.fromtimestamp(moment, UTC)
        return self.backups.index.newest_before(moment, component)

    async def details(self, snapshot_id: str) -> SnapshotDetails:
        snapshot = self.backups.index.get(snapshot_id)
        nodes = await self.restic.ls(snapshot.id)
        files = tuple(
            SnapshotFile(str(n.get("path", n.get("name"))), int(n.get("size", 0)))
            for n in nodes
            if n.get("type") == "file"
        )
        return SnapshotDetails(snapshot, files, sum(f.size for f in files), None)

    # Retention and health ------------------------------------------------------------------

    async def forget(
        self,
        keep_last: int | None = 50,
        keep_hourly: int | None = None,
        keep_daily: int | None = None,
    ) -> ForgetResult:
        """The policy applies to each component's snapshots on their own."""
        kept: list[str] = []
        removed: list[str] = []
        async with self._lock:
            for component in self.config.schemas:
                groups = await self.restic.forget(
                    tag=f"{POSTGRES_TAG},component:{component}",
                    keep_last=keep_last,
                    keep_hourly=keep_hourly,
                    keep_daily=keep_daily,
                )
                kept += [s["id"] for g in groups for s in g.get("keep") or []]
                removed += [s["id"] for g in groups for s in g.get("remove") or []]
        if removed:
            await self.refresh()
        return ForgetResult(tuple(kept), tuple(removed))

    async def prune(self) -> None:
        async with self._lock:
            await self.restic.prune()

    async def check(self, *, read_data: bool = False) -> CheckResult:
        async with self._lock:
            try:
                output = await self.restic.check(read_data=read_data)
            except ResticCommandFailed as exc:
                return CheckResult(ok=False, output_tail=str(exc))
        return CheckResult(ok=True, output_tail=output.strip()[-400:])

    async def verify_latest(self, on_progress: ProgressCallback | None = None) -> DrillResult:
        """Restore drill: each component's newest snapshot restored into a scratch database
        and read back (the same work as a test rollback)."""
        started, files = time.monotonic(), []
        newest: Snapshot | None = None
        for component in self.config.schemas:
            if component in self.config.never_roll_back:
                continue
            snapshot = self.backups.index.newest_containing([component])
            if snapshot is None:
                continue
            newest = snapshot if newest is None or snapshot.time > newest.time else newest
            try:
                preview = await self.backups.preview(snapshot.id)
            except BackupError as exc:
                files.append(FileVerification(component, str(exc)[:200], None, 0))
                continue
            files += [c.verification for c in preview.components]
        if newest is None:
            raise SnapshotNotFound(
                "there is no PostgreSQL snapshot to verify yet: run a backup first"
            )
        result = DrillResult(newest.id, datetime.now(UTC), time.monotonic() - started, tuple(files))
        if result.ok:
            self._last_verified = result.verified_at
        self.events.publish(DrillFinished(result))
        return result

    # Rollback ------------------------------------------------------------------------------

    async def test_rollback(
        self, snapshot_id: str, components: Sequence[str] | None = None
    ) -> RollbackPreview:
        await self._check_components(snapshot_id, components)
        return await self.backups.preview(snapshot_id)

    async def rollback(
        self,
        snapshot_id: str,
        components: Sequence[str] | None,
        reason: str,
        pause_writers: rollback_flow.PauseWriters,
        reopen: rollback_flow.Reopen,
        on_progress: ProgressCallback | None = None,
    ) -> RollbackResult:
        """Writers of the component are paused for the whole rollback: what they would write
        meanwhile would land in the schema being replaced."""
        component = await self._check_components(snapshot_id, components)
        started = time.monotonic()
        async with self._lock:
            try:
                async with pause_writers():
                    result = await self.backups.rollback(snapshot_id, reason)
            except BackupError as exc:
                self.events.publish(
                    RollbackFinished(
                        snapshot_id,
                        (component,),
                        time.monotonic() - started,
                        failed_step=getattr(exc, "step", None),
                        error_label=type(exc).__name__,
                    )
                )
                raise
        self.events.publish(
            RollbackFinished(snapshot_id, (component,), result.duration_seconds, result)
        )
        await self.refresh()
        return result

    async def _check_components(self, snapshot_id: str, components: Sequence[str] | None) -> str:
        _, component = await self.backups.snapshot(snapshot_id)
        others = [c for c in components or () if c != component]
        if others:
            unknown = [c for c in others if c not in self.config.schemas]
            if unknown:
                raise UnknownComponent(
                    f"unknown component(s) {', '.join(unknown)}: choose from "
                    f"{', '.join(self.config.schemas)}"
                )
            raise RollbackRefused(
                f"snapshot {snapshot_id[:8]} holds {component} only: on PostgreSQL each "
                f"component has snapshots of its own; roll back {', '.join(others)} with one "
                "of theirs"
            )
        return component
