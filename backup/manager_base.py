"""What `BackupManager` (SQLite files) and `PgBackupManager` (PostgreSQL schemas) share.

Both keep their snapshots in one restic repository behind one lock, publish the same events,
coalesce emergency backups within a cooldown and read details, prune and check from restic the
same way. Each manager says where its snapshot index, successes and cooldown live.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from backup.errors import BackupError, ResticCommandFailed, SnapshotNotFound, validate_reason
from backup.events import (
    BackupFailed,
    DrillFinished,
    EventPublisher,
    Listener,
    SnapshotCountChanged,
)
from backup.identity import RepositoryIdentity, missing
from backup.index import SnapshotIndex
from backup.models import (
    BackupReason,
    BackupResult,
    CheckResult,
    DrillResult,
    Snapshot,
    SnapshotDetails,
    SnapshotFile,
)
from backup.restic import Restic


@dataclass(frozen=True)
class BackupStatus:
    """Numbers a metrics exporter reads: last success per component, count, last drill."""

    last_success: dict[str, datetime]
    snapshot_count: int
    last_verified: datetime | None


class BackupManagerBase(ABC):
    """The status, events, emergency cooldown, details, prune and check of a backup manager."""

    def __init__(self, restic: Restic, identity: RepositoryIdentity | None = None) -> None:
        self.restic = restic
        # The repository every write must go to; without one given, the one first seen.
        self.identity = identity
        self.events = EventPublisher()
        self._last_verified: datetime | None = None
        self._last_emergency: tuple[float, BackupResult] | None = None
        self._lock = asyncio.Lock()

    # What each manager supplies ----------------------------------------------------------

    @property
    @abstractmethod
    def _snapshot_index(self) -> SnapshotIndex: ...

    @property
    @abstractmethod
    def _emergency_cooldown_seconds(self) -> float: ...

    @abstractmethod
    def _successes(self) -> dict[str, datetime]:
        """The time of the last successful backup of each component."""

    @abstractmethod
    async def _reload_index(self) -> list[Snapshot]:
        """Read the snapshot list from the repository into the index; newest first."""

    def _data_added(self, snapshot_id: str) -> int | None:
        """Bytes the snapshot added to the repository, where the manager remembers it."""
        return None

    # Status and events -------------------------------------------------------------------

    def status(self) -> BackupStatus:
        return BackupStatus(dict(self._successes()), len(self._snapshot_index), self._last_verified)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self.events.subscribe(listener)

    # Backups -----------------------------------------------------------------------------

    async def verify_repository(self, *, thorough: bool = False) -> str:
        """The repository's id, after checking it is still the one the backups went to;
        raises RepositoryMissing or RepositoryReplaced otherwise. `thorough` asks restic
        even where a cheaper sign would do (see `RepositoryIdentity`)."""
        if self.identity is None:
            found = await self.restic.repository_id()
            if found is None:
                raise missing(self.restic.repository, None)
            self.identity = RepositoryIdentity(self.restic, found)
        return await self.identity.verify(thorough=thorough)

    async def _take_once_per_emergency(
        self, reason: str, components: Sequence[str], take: Callable[[], Awaitable[BackupResult]]
    ) -> BackupResult:
        """Run `take` under the lock, into the repository the backups went to so far; an
        emergency backup within the cooldown of the last one returns that one, marked
        coalesced, instead of taking another."""
        async with self._lock:
            if reason == BackupReason.EMERGENCY and (previous := self._recent_emergency()):
                return dataclasses.replace(previous, coalesced=True)
            try:
                await self.verify_repository()
            except BackupError as exc:
                self.events.publish(
                    BackupFailed(tuple(components), reason, exc.label, str(exc), 0.0)
                )
                raise
            result = await take()
            if reason == BackupReason.EMERGENCY:
                self._last_emergency = (time.monotonic(), result)
            return result

    def _recent_emergency(self) -> BackupResult | None:
        if self._last_emergency is None:
            return None
        at, result = self._last_emergency
        cooling = time.monotonic() - at < self._emergency_cooldown_seconds
        return result if cooling else None

    # The snapshot list -------------------------------------------------------------------

    async def refresh(self) -> list[Snapshot]:
        """Re-read the list from `restic snapshots`: other processes (`ers backup --offline`,
        another replica) add and forget snapshots too."""
        await self.verify_repository()
        snapshots = await self._reload_index()
        self.events.publish(SnapshotCountChanged(len(snapshots)))
        return snapshots

    async def find(self, snapshot_id: str) -> Snapshot:
        """The snapshot by id or unique prefix; an id the list does not know yet is looked
        for once more in a fresh list before it is called unknown."""
        try:
            return self._snapshot_index.get(snapshot_id)
        except SnapshotNotFound:
            await self.refresh()
            return self._snapshot_index.get(snapshot_id)

    def newest_snapshot_before(
        self, moment: datetime | float, component: str | None = None
    ) -> Snapshot | None:
        if not isinstance(moment, datetime):
            moment = datetime.fromtimestamp(moment, UTC)
        return self._snapshot_index.newest_before(moment, component)

    async def details(self, snapshot_id: str) -> SnapshotDetails:
        snapshot = await self.find(snapshot_id)
        nodes = await self.restic.ls(snapshot.id)
        files = tuple(
            SnapshotFile(str(n.get("path", n.get("name"))), int(n.get("size", 0)))
            for n in nodes
            if n.get("type") == "file"
        )
        return SnapshotDetails(
            snapshot, files, sum(f.size for f in files), self._data_added(snapshot.id)
        )

    # Retention and health ----------------------------------------------------------------

    async def prune(self) -> None:
        async with self._lock:
            await self.verify_repository()
            await self.restic.prune()

    async def check(self, *, read_data: bool = False) -> CheckResult:
        async with self._lock:
            try:
                output = await self.restic.check(read_data=read_data)
            except ResticCommandFailed as exc:
                return CheckResult(ok=False, output_tail=str(exc))
        return CheckResult(ok=True, output_tail=output.strip()[-400:])

    @staticmethod
    def _checked_reason(reason: str) -> str:
        """The reason as it will be tagged: one of `BackupReason` or an operator's own word
        (`before-upgrade`); InvalidBackupReason when it cannot be a restic tag."""
        return validate_reason(str(reason))

    def _record_drill(self, result: DrillResult) -> DrillResult:
        if result.ok:
            self._last_verified = result.verified_at
        self.events.publish(DrillFinished(result))
        return result
