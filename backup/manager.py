"""BackupManager: consistent snapshots of the state files, the snapshot index, retention, drills.

The service builds one manager in its lifespan and reaches every backup feature through it.
Rolling back lives in `backup.rollback`; the manager exposes it as `test_rollback`/`rollback`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from backup import rollback as rollback_flow
from backup.errors import UnknownComponent
from backup.events import SnapshotCountChanged
from backup.identity import RepositoryIdentity
from backup.index import ERS_TAG, SnapshotIndex
from backup.manager_base import BackupManagerBase, BackupStatus
from backup.models import (
    BackupReason,
    BackupResult,
    DrillResult,
    ForgetResult,
    RollbackPreview,
    RollbackResult,
    Snapshot,
)
from backup.repository import RepositoryConfig, open_identified
from backup.restic import ProgressCallback, Restic
from backup.snapshotter import Snapshotter
from backup.workspace import Workspace

__all__ = ["BackupConfig", "BackupManager", "BackupStatus"]

_COMPONENT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


@dataclass(frozen=True)
class BackupConfig:
    """What to back up and where the manager may keep its working files."""

    components: Mapping[str, Path]  # component name -> its live SQLite file
    work_dir: Path  # staging and scratch folders; best on the same disk as the data
    never_roll_back: frozenset[str] = frozenset({"incidents"})  # backed up, never restored
    emergency_cooldown_seconds: float = 300.0
    shutdown_timeout_seconds: float = 30.0

    def __post_init__(self) -> None:
        for name in self.components:
            if not _COMPONENT_NAME.fullmatch(name):
                raise UnknownComponent(
                    f"component name '{name}' must be lowercase letters, digits, '-' or '_'"
                )


class BackupManager(BackupManagerBase):
    def __init__(
        self, restic: Restic, config: BackupConfig, identity: RepositoryIdentity | None = None
    ) -> None:
        super().__init__(restic, identity)
        self.config = config
        self.index = SnapshotIndex()
        self.workspace = Workspace(Path(config.work_dir))
        self.snapshotter = Snapshotter(
            restic,
            config.components,
            self.workspace.staging_dir(),
            self.index,
            self.events,
            scratch_dir=self.workspace.scratch_root(),
        )

    @classmethod
    async def open(
        cls, repository: RepositoryConfig, config: BackupConfig, *, may_create: bool = False
    ) -> BackupManager:
        """Reach the repository (creating it only with `may_create`, see
        `backup.repository.open_identified`), then load the index."""
        identity = await open_identified(repository, may_create=may_create)
        manager = cls(identity.restic, config, identity)
        await manager.start()
        return manager

    async def start(self) -> None:
        self.workspace.remove_leftovers(self.config.components.values())
        await self.refresh()

    @property
    def _snapshot_index(self) -> SnapshotIndex:
        return self.index

    @property
    def _emergency_cooldown_seconds(self) -> float:
        return self.config.emergency_cooldown_seconds

    def _successes(self) -> dict[str, datetime]:
        return self.snapshotter.last_success

    def _data_added(self, snapshot_id: str) -> int | None:
        summary = self.snapshotter.summary_of(snapshot_id)
        return summary.data_added if summary else None

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
        """One snapshot of `components` (None: the full system, all components together).

        Unchanged components are skipped unless `skip_unchanged` is False (a backup a person
        asked for, whose reason tag must exist); a full-system backup is all or nothing, so a
        full snapshot always holds every component.
        """
        reason = self._checked_reason(reason)
        names = self._check_components(components)
        return await self._take_once_per_emergency(
            reason,
            names,
            lambda: self.snapshotter.take(
                names,
                reason,
                all_or_nothing=components is None,
                timeout=timeout,
                on_progress=on_progress,
                skip_unchanged=skip_unchanged,
            ),
        )

    async def shutdown_backup(self, timeout: float | None = None) -> BackupResult:
        """The final full backup when the service stops, bounded by `timeout` seconds."""
        limit = self.config.shutdown_timeout_seconds if timeout is None else timeout
        return await self.create(None, BackupReason.SHUTDOWN, timeout=limit)

    def _check_components(self, components: Sequence[str] | None) -> list[str]:
        if components is None:
            return list(self.config.components)
        unknown = [c for c in components if c not in self.config.components]
        if unknown or not components:
            known = ", ".join(self.config.components)
            raise UnknownComponent(
                f"unknown component(s) {', '.join(unknown) or '(none given)'}: choose from {known}"
            )
        return list(dict.fromkeys(components))

    # The snapshot list ---------------------------------------------------------------------

    def list(self) -> list[Snapshot]:
        """ERS snapshots, newest first, from memory."""
        return self.index.all()

    async def _reload_index(self) -> list[Snapshot]:
        self.index.replace(await self.restic.snapshots(tag=ERS_TAG))
        return self.index.all()

    # Retention and health ------------------------------------------------------------------

    async def forget(
        self,
        keep_last: int | None = 50,
        keep_hourly: int | None = None,
        keep_daily: int | None = None,
    ) -> ForgetResult:
        """Drop ERS snapshots outside the policy (data is freed by `prune`)."""
        async with self._lock:
            await self.verify_repository()
            groups = await self.restic.forget(
                tag=ERS_TAG, keep_last=keep_last, keep_hourly=keep_hourly, keep_daily=keep_daily
            )
        kept = [s for g in groups for s in g.get("keep") or []]
        removed = [s["id"] for g in groups for s in g.get("remove") or []]
        if groups:
            self.index.replace(kept)
        self.snapshotter.forget(removed)
        self.events.publish(SnapshotCountChanged(len(self.index)))
        return ForgetResult(tuple(s["id"] for s in kept), tuple(removed))

    async def verify_latest(self, on_progress: ProgressCallback | None = None) -> DrillResult:
        """Restore drill: the newest full snapshot, restored into scratch and verified."""
        return self._record_drill(await rollback_flow.drill(self, on_progress=on_progress))

    # Rollback ------------------------------------------------------------------------------

    async def test_rollback(
        self, snapshot_id: str, components: Sequence[str] | None = None
    ) -> RollbackPreview:
        return await rollback_flow.preview(self, snapshot_id, components)

    async def rollback(
        self,
        snapshot_id: str,
        components: Sequence[str] | None,
        reason: str,
        pause_writers: rollback_flow.PauseWriters,
        reopen: rollback_flow.Reopen,
        on_progress: ProgressCallback | None = None,
    ) -> RollbackResult:
        async with self._lock:
            await self.verify_repository()
            return await rollback_flow.apply(
                self, snapshot_id, components, reason, pause_writers, reopen, on_progress
            )
