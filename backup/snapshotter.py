"""Taking one snapshot: stage consistent copies, leave out what has not changed, run restic.

The snapshotter remembers, per component, the content hash and the snapshot of its last
backup, so an unchanged component costs a copy and a hash but no restic run.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from backup.errors import BackupError, ResticTimeout
from backup.events import (
    BackupFailed,
    BackupSkipped,
    BackupSucceeded,
    EventPublisher,
    SnapshotCountChanged,
)
from backup.index import SnapshotIndex, tags_for
from backup.models import BackupResult, BackupSummary, Snapshot
from backup.process import ProgressCallback
from backup.restic import Restic
from backup.staging import StagedFile, clear_folder, stage_component, write_manifest


class Snapshotter:
    def __init__(
        self,
        restic: Restic,
        components: Mapping[str, Path],
        staging_dir: Path,
        index: SnapshotIndex,
        events: EventPublisher,
    ) -> None:
        self.restic = restic
        self.components = components
        self.staging_dir = staging_dir
        self.index = index
        self.events = events
        self.last_success: dict[str, datetime] = {}
        self._hash_at_last_snapshot: dict[str, str] = {}
        self._snapshot_of: dict[str, str] = {}  # component -> newest snapshot holding it
        self._summaries: dict[str, BackupSummary] = {}  # keyed by short id

    def summary_of(self, snapshot_id: str) -> BackupSummary | None:
        return self._summaries.get(snapshot_id[:8])

    def _unchanged(self, staged: StagedFile) -> bool:
        holder = self._snapshot_of.get(staged.component)
        same = self._hash_at_last_snapshot.get(staged.component) == staged.sha256
        return same and holder is not None and self.index.contains(holder)

    def forget(self, removed_ids: Iterable[str]) -> None:
        """Snapshots removed by retention no longer vouch for a component being unchanged."""
        removed = {i[:8] for i in removed_ids}
        for component, snapshot_id in list(self._snapshot_of.items()):
            if snapshot_id[:8] in removed:
                del self._snapshot_of[component]
                self._hash_at_last_snapshot.pop(component, None)

    async def take(
        self,
        names: Sequence[str],
        reason: str,
        *,
        all_or_nothing: bool,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> BackupResult:
        started_at, started = datetime.now(UTC), time.monotonic()
        staging = self.staging_dir
        staging.mkdir(parents=True, exist_ok=True)
        try:
            staged = await self._stage(names, staging)
            changed = [f for f in staged if not self._unchanged(f)]
            holders = {self._snapshot_of.get(f.component) for f in staged}
            if all_or_nothing and changed and len(changed) < len(staged):
                changed = staged  # a full snapshot must stand on its own
            if all_or_nothing and not changed and len(holders) != 1:
                changed = staged  # unchanged, but spread over several snapshots
            skipped = tuple(f.component for f in staged if f not in changed)
            if not changed:
                return self._skipped(names, reason, started_at, started, holders)
            for unchanged in (f for f in staged if f not in changed):
                unchanged.path.unlink()
            write_manifest(staging, changed)
            remaining = None if timeout is None else timeout - (time.monotonic() - started)
            if remaining is not None and remaining <= 0:
                raise ResticTimeout(f"copying the state took longer than {timeout:g} s")
            tags = tags_for((f.component for f in changed), reason)
            message = await self.restic.backup(
                ["."], cwd=staging, tags=tags, timeout=remaining, on_progress=on_progress
            )
        except BackupError as exc:
            self.events.publish(
                BackupFailed(tuple(names), reason, exc.label, str(exc), time.monotonic() - started)
            )
            raise
        finally:
            clear_folder(staging)
        summary = BackupSummary.from_restic(message)
        snapshot_id = str(message["snapshot_id"])
        components = tuple(sorted(f.component for f in changed))
        self._record(snapshot_id, changed, started_at, reason, summary)
        result = BackupResult(
            snapshot_id=snapshot_id,
            reason=reason,
            components=components,
            skipped=skipped,
            started_at=started_at,
            duration_seconds=time.monotonic() - started,
            summary=summary,
            total_size=sum(f.size for f in changed),
        )
        self.events.publish(BackupSucceeded(result))
        self.events.publish(SnapshotCountChanged(len(self.index)))
        return result

    async def _stage(self, names: Sequence[str], staging: Path) -> list[StagedFile]:
        clear_folder(staging)
        copies = [
            asyncio.to_thread(stage_component, name, Path(self.components[name]), staging)
            for name in names
        ]
        return list(await asyncio.gather(*copies))

    def _skipped(
        self,
        names: Sequence[str],
        reason: str,
        started_at: datetime,
        started: float,
        holders: set[str | None],
    ) -> BackupResult:
        reused = next(iter(holders)) if len(holders) == 1 else None
        result = BackupResult(
            snapshot_id=None,
            reason=reason,
            components=(),
            skipped=tuple(names),
            started_at=started_at,
            duration_seconds=time.monotonic() - started,
            reused_snapshot_id=reused,
        )
        self.events.publish(BackupSkipped(result))
        return result

    def _record(
        self,
        snapshot_id: str,
        staged: Sequence[StagedFile],
        started_at: datetime,
        reason: str,
        summary: BackupSummary,
    ) -> None:
        components = tuple(sorted(f.component for f in staged))
        for f in staged:
            self._hash_at_last_snapshot[f.component] = f.sha256
            self._snapshot_of[f.component] = snapshot_id
            self.last_success[f.component] = started_at
        self._summaries[snapshot_id[:8]] = summary
        tags = tuple(tags_for(components, reason))
        self.index.add(
            Snapshot(
                snapshot_id,
                snapshot_id[:8],
                started_at,
                components,
                reason,
                tags,
                socket.gethostname(),
            )
        )
