"""The SQLite files backend: each component is one SQLite file in the data directory.

A backup stages consistent copies (the online backup API) and runs restic on them, leaving out
what has not changed (`backup.snapshotter`). Test rollbacks and rollbacks restore into scratch
and verify first (`backup.file_rollback`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from backup import swap_journal
from backup.backend import BackupRequest, check_component_name
from backup.errors import (
    RollbackRefused,
    SnapshotNotFound,
)
from backup.events import EventPublisher
from backup.file_rollback import FileRollback
from backup.index import ERS_TAG, SnapshotIndex
from backup.models import (
    BackupResult,
    Snapshot,
)
from backup.restic import Restic
from backup.snapshotter import Snapshotter
from backup.workspace import Workspace


@dataclass(frozen=True)
class BackupConfig:
    """What to back up and where the manager may keep its working files."""

    components: Mapping[str, Path]  # component name -> its live SQLite file
    work_dir: Path  # staging and scratch folders; best on the same disk as the data
    never_roll_back: frozenset[str] = frozenset({"incidents"})  # backed up, never restored

    one_component_per_snapshot = False

    def __post_init__(self) -> None:
        for name in self.components:
            check_component_name(name)

    def build(self, restic: Restic, index: SnapshotIndex, events: EventPublisher) -> SqliteFiles:
        return SqliteFiles(restic, self, index, events)


class SqliteFiles:
    """Snapshots, test rollbacks and rollbacks of the component files (`BackupBackend`)."""

    tag = ERS_TAG

    def __init__(
        self,
        restic: Restic,
        config: BackupConfig,
        index: SnapshotIndex,
        events: EventPublisher,
    ) -> None:
        self.config = config
        self.components = list(config.components)
        self.workspace = Workspace(Path(config.work_dir))
        self.snapshotter = Snapshotter(
            restic,
            config.components,
            self.workspace.staging_dir(),
            index,
            events,
            scratch_dir=self.workspace.scratch_root(),
        )
        rollback = FileRollback(restic, config.components, self.workspace, self.snapshotter, events)
        self.preview, self.apply = rollback.preview, rollback.apply

    async def start(self) -> None:
        """Undo a swap a crash interrupted, then clear what else the interrupted run left."""
        live_files = list(self.config.components.values())
        await asyncio.to_thread(swap_journal.recover, {Path(f).parent for f in live_files})
        self.workspace.remove_leftovers(live_files)

    async def live_sizes(self) -> dict[str, int]:
        """The disk each component takes: its file and its write-ahead log, where the rows
        written since the last checkpoint are (left out, a store whose rows sat there read as
        small as an empty one). SQLite keeps the log at its largest after a checkpoint."""
        sizes = {}
        for name, path in self.config.components.items():
            live, wal = Path(path), Path(f"{path}-wal")
            if live.exists():
                sizes[name] = live.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        return sizes

    async def take(self, request: BackupRequest) -> BackupResult:
        """One snapshot of the named components; unchanged ones are skipped, and a full
        backup is all or nothing, so a full snapshot always holds every component."""
        return await self.snapshotter.take(request)

    def drill_plan(self, index: SnapshotIndex) -> list[tuple[Snapshot, list[str]]]:
        snapshot = index.newest_containing(self.components)
        if snapshot is None:
            raise SnapshotNotFound(
                "there is no full snapshot to verify yet: run a full backup first"
            )
        return [(snapshot, list(self.components))]

    def rollback_components(
        self, snapshot: Snapshot, components: Sequence[str] | None
    ) -> list[str]:
        """None: every component the snapshot holds that may be rolled back (a snapshot of
        some components, such as a rollback's safety snapshot, rolls back just those)."""
        protected = self.config.never_roll_back
        held = [c for c in self.components if c not in protected and c in snapshot.components]
        if components is None:
            names = held
            if not names:
                raise RollbackRefused(
                    f"snapshot {snapshot.short_id} holds no component that can be rolled back "
                    f"(it has {', '.join(snapshot.components) or 'nothing'}): pick another"
                )
        else:
            names = list(dict.fromkeys(components))
        refused = [c for c in names if c in protected]
        if refused:
            raise RollbackRefused(
                f"{', '.join(refused)} is never rolled back: it holds the record of what happened"
            )
        missing = [c for c in names if c not in snapshot.components]
        if missing:
            raise RollbackRefused(
                f"snapshot {snapshot.short_id} does not contain {', '.join(missing)}: pick a "
                "snapshot that does, or name only components it holds "
                f"({', '.join(held) or 'none that can be rolled back'})"
            )
        unknown = [c for c in names if c not in self.config.components]
        if unknown or not names:
            raise RollbackRefused(
                f"nothing to roll back for {', '.join(unknown) or 'that request'}: name "
                f"components from {', '.join(self.components)}"
            )
        return names
