"""BackupManager: consistent snapshots of the state files, the snapshot index, retention, drills.

The service builds one manager in its lifespan and reaches every backup feature through it.
Rolling back lives in `backup.rollback`; the manager exposes it as `test_rollback`/`rollback`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backup import rollback as rollback_flow
from backup.errors import ResticCommandFailed, UnknownComponent
from backup.events import (
    DrillFinished,
    EventPublisher,
    Listener,
    SnapshotCountChanged,
)
from backup.index import ERS_TAG, SnapshotIndex
from backup.models import (
    BackupReason,
    BackupResult,
    CheckResult,
    DrillResult,
    ForgetResult,
    RollbackPreview,
    RollbackResult,
    Snapshot,
    SnapshotDetails,
    SnapshotFile,
)
from backup.repository import RepositoryConfig, open_repository
from backup.restic import ProgressCallback, Restic
from backup.snapshotter import Snapshotter
from backup.workspace import Workspace

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


@dataclass(frozen=True)
class BackupStatus:
    """Numbers a metrics exporter reads: last success per component, count, last drill."""

    last_success: dict[str, datetime]
    snapshot_count: int
    last_verified: datetime | None


class BackupManager:
    def __init__(self, restic: Restic, config: BackupConfig) -> None:
        self.restic = restic
        self.config = config
        self.index = SnapshotIndex()
        self.events = EventPublisher()
        self.workspace = Workspace(Path(config.work_dir))
        self._last_verified: datetime | None = None
        self._lock = asyncio.Lock()
        self.snapshotter = Snapshotter(
            restic,
            config.components,
            self.workspace.staging_dir(),
            self.index,
            self.events,
            scratch_dir=self.workspace.scratch_root(),
        )
        self._last_emergency: tuple[float, BackupResult] | None = None

    @classmethod
    async def open(cls, repository: RepositoryConfig, config: BackupConfig) -> BackupManager:
        """Reach (and on first use initialise) the repository, then load the index."""
        manager = cls(await open_repository(repository), config)
        await manager.start()
        return manager

    async def start(self) -> None:
        self.workspace.remove_leftovers(self.config.components.values())
        await self.refresh()

    def status(self) -> BackupStatus:
        return BackupStatus(
            dict(self.snapshotter.last_success), len(self.index), self._last_verified
        )

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
        """One snapshot of `components` (None: the full system, all components together).

        Unchanged components are skipped; a full-system backup is all or nothing, so a full
        snapshot always holds every component.
        """
        reason = BackupReason(reason).value
        names = self._check_components(components)
        async with self._lock:
            if reason == BackupReason.EMERGENCY and (previous := self._recent_emergency()):
                return dataclasses.replace(previous, coalesced=True)
            result = await self.snapshotter.take(
                names,
                reason,
                all_or_nothing=components is None,
                timeout=timeout,
                on_progress=on_progress,
            )
            if reason == BackupReason.EMERGENCY:
                self._last_emergency = (time.monotonic(), result)
            return result

    async def shutdown_backup(self, timeout: float | None = None) -> BackupResult:
        """The final full backup when the service stops, bounded by `timeout` seconds."""
        limit = self.config.shutdown_timeout_seconds if timeout is None else timeout
        return await self.create(None, BackupReason.SHUTDOWN, timeout=limit)

    def _recent_emergency(self) -> BackupResult | None:
        if self._last_emergency is None:
            return None
        at, result = self._last_emergency
        cooling = time.monotonic() - at < self.config.emergency_cooldown_seconds
        return result if cooling else None

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

    async def refresh(self) -> list[Snapshot]:
        self.index.replace(await self.restic.snapshots(tag=ERS_TAG))
        self.events.publish(SnapshotCountChanged(len(self.index)))
        return self.index.all()

    def newest_snapshot_before(
        self, moment: datetime | float, component: str | None = None
    ) -> Snapshot | None:
        if not isinstance(moment, datetime):
            moment = datetime.fromtimestamp(moment, UTC)
        return self.index.newest_before(moment, component)

    async def details(self, snapshot_id: str) -> SnapshotDetails:
        snapshot = self.index.get(snapshot_id)
        nodes = await self.restic.ls(snapshot.id)
        files = tuple(
            SnapshotFile(str(n.get("path", n.get("name"))), int(n.get("size", 0)))
            for n in nodes
            if n.get("type") == "file"
        )
        summary = self.snapshotter.summary_of(snapshot.id)
        return SnapshotDetails(
            snapshot, files, sum(f.size for f in files), summary.data_added if summary else None
        )

    # Retention and health ------------------------------------------------------------------

    async def forget(
        self,
        keep_last: int | None = 50,
        keep_hourly: int | None = None,
        keep_daily: int | None = None,
    ) -> ForgetResult:
        """Drop ERS snapshots outside the policy (data is freed by `prune`)."""
        async with self._lock:
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
        """Restore drill: the newest full snapshot, restored into scratch and verified."""
        result = await rollback_flow.drill(self, on_progress=on_progress)
        if result.ok:
            self._last_verified = result.verified_at
        self.events.publish(DrillFinished(result))
        return result

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
            return await rollback_flow.apply(
                self, snapshot_id, components, reason, pause_writers, reopen, on_progress
            )
