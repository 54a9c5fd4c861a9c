"""PgBackupManager: what `BackupManager` offers the service, for state on PostgreSQL.

The snapshots are `PgBackups`' (one per component schema); the list, retention, prune, check
and drills are restic's, as for files. A backup of several components is one snapshot each,
made side by side; a rollback names one snapshot and so restores one component.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
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
    RollbackFinished,
    SnapshotCountChanged,
)
from backup.identity import RepositoryIdentity
from backup.index import SnapshotIndex
from backup.manager_base import BackupManagerBase
from backup.models import (
    BackupReason,
    BackupResult,
    DrillResult,
    FileVerification,
    ForgetResult,
    RollbackPreview,
    RollbackResult,
    Snapshot,
)
from backup.pg import POSTGRES_TAG, PgBackupConfig, PgBackups
from backup.repository import RepositoryConfig, open_identified
from backup.restic import ProgressCallback


class PgBackupManager(BackupManagerBase):
    def __init__(
        self,
        backups: PgBackups,
        *,
        emergency_cooldown_seconds: float = 300.0,
        identity: RepositoryIdentity | None = None,
    ) -> None:
        super().__init__(backups.restic, identity)
        self.backups = backups
        self.config = backups.config
        self.emergency_cooldown_seconds = emergency_cooldown_seconds
        self._last_success: dict[str, datetime] = {}

    @classmethod
    async def open(
        cls,
        repository: RepositoryConfig,
        database_url: str,
        config: PgBackupConfig,
        *,
        emergency_cooldown_seconds: float = 300.0,
        may_create: bool = False,
    ) -> PgBackupManager:
        """Reach the repository (creating it only with `may_create`), load the list, and drop
        old schemas an interrupted rollback left behind."""
        identity = await open_identified(repository, may_create=may_create)
        backups = PgBackups(identity.restic, database_url, config)
        manager = cls(
            backups, emergency_cooldown_seconds=emergency_cooldown_seconds, identity=identity
        )
        await manager.refresh()
        await backups.drop_leftovers()
        return manager

    @property
    def _snapshot_index(self) -> SnapshotIndex:
        return self.backups.index

    @property
    def _emergency_cooldown_seconds(self) -> float:
        return self.emergency_cooldown_seconds

    def _successes(self) -> dict[str, datetime]:
        return self._last_success

    # Backups ------------------------------------------------------------------------------

    async def create(
        self,
        components: Sequence[str] | None = None,
        reason: str = BackupReason.MANUAL,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        skip_unchanged: bool = True,
    ) -> BackupResult:
        """A snapshot of each of `components` (None: every one); the result names the first
        snapshot and every component. Every component is dumped each time, unchanged or not
        (`skip_unchanged` is accepted for the SQLite manager's signature)."""
        reason = self._checked_reason(reason)
        names = list(components) if components is not None else list(self.config.schemas)
        return await self._take_once_per_emergency(
            reason, names, lambda: self._take(names, reason, timeout)
        )

    async def _take(self, names: list[str], reason: str, timeout: float | None) -> BackupResult:
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
        return dataclasses.replace(
            results[0],
            components=tuple(c for r in results for c in r.components),
            duration_seconds=time.monotonic() - started,
            total_size=sum(r.total_size for r in results),
        )

    async def shutdown_backup(self, timeout: float | None = None) -> BackupResult:
        return await self.create(None, BackupReason.SHUTDOWN, timeout=timeout)

    # The snapshot list ---------------------------------------------------------------------

    def list(self) -> list[Snapshot]:
        return self.backups.list()

    async def _reload_index(self) -> list[Snapshot]:
        return await self.backups.refresh()

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
            await self.verify_repository()
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
        return self._record_drill(
            DrillResult(newest.id, datetime.now(UTC), time.monotonic() - started, tuple(files))
        )

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
            await self.verify_repository()
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
