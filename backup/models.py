"""Values the backup library hands back: snapshots, results of each operation, progress."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class BackupReason(StrEnum):
    SCHEDULED = "scheduled"
    MANUAL = "manual"
    EMERGENCY = "emergency"
    PRE_ROLLBACK = "pre-rollback"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class Progress:
    """One restic status line: how far a backup or restore is."""

    percent_done: float


@dataclass(frozen=True)
class BackupSummary:
    """restic's summary of one backup run."""

    files_new: int
    files_changed: int
    files_unmodified: int
    data_added: int
    total_files_processed: int
    total_bytes_processed: int
    restic_duration_seconds: float

    @classmethod
    def of_all(cls, summaries: list[BackupSummary]) -> BackupSummary:
        """One backup made as several snapshots side by side: their files and bytes added
        up, and restic's longest run."""
        return cls(
            files_new=sum(s.files_new for s in summaries),
            files_changed=sum(s.files_changed for s in summaries),
            files_unmodified=sum(s.files_unmodified for s in summaries),
            data_added=sum(s.data_added for s in summaries),
            total_files_processed=sum(s.total_files_processed for s in summaries),
            total_bytes_processed=sum(s.total_bytes_processed for s in summaries),
            restic_duration_seconds=max((s.restic_duration_seconds for s in summaries), default=0),
        )

    @classmethod
    def from_restic(cls, message: dict[str, Any]) -> BackupSummary:
        return cls(
            files_new=int(message.get("files_new", 0)),
            files_changed=int(message.get("files_changed", 0)),
            files_unmodified=int(message.get("files_unmodified", 0)),
            data_added=int(message.get("data_added", 0)),
            total_files_processed=int(message.get("total_files_processed", 0)),
            total_bytes_processed=int(message.get("total_bytes_processed", 0)),
            restic_duration_seconds=float(message.get("total_duration", 0.0)),
        )


@dataclass(frozen=True)
class Snapshot:
    """One ERS snapshot as listed in the index."""

    id: str
    short_id: str
    time: datetime
    components: tuple[str, ...]
    reason: str | None
    tags: tuple[str, ...]
    hostname: str = ""


@dataclass(frozen=True)
class BackupResult:
    """What `BackupManager.create` did.

    `snapshot_id` is None when every requested component was unchanged (all in `skipped`).
    `coalesced` marks an emergency request answered with the previous emergency backup.
    A backup made as one snapshot per component (PostgreSQL) names its first snapshot in
    `snapshot_id`, every snapshot with what it holds in `made`, and their summaries added up.
    """

    snapshot_id: str | None
    reason: str
    components: tuple[str, ...]
    skipped: tuple[str, ...]
    started_at: datetime
    duration_seconds: float
    summary: BackupSummary | None = None
    total_size: int = 0
    coalesced: bool = False
    reused_snapshot_id: str | None = None
    made: tuple[tuple[str, tuple[str, ...]], ...] = ()
    as_found: tuple[str, ...] = ()  # copied byte for byte, damaged (``BackupRequest.as_found``)

    @classmethod
    def nothing_changed(
        cls,
        names: Sequence[str],
        reason: str,
        started_at: datetime,
        duration_s: float,
        holders: set[str | None],
    ) -> BackupResult:
        """Every component skipped; ``holders``: the snapshots that hold them as they are
        (one: it is reused, and named)."""
        reused = next(iter(holders)) if len(holders) == 1 else None
        return cls(
            None, reason, (), tuple(names), started_at, duration_s, reused_snapshot_id=reused
        )

    @property
    def data_added(self) -> int:
        return self.summary.data_added if self.summary else 0

    @property
    def snapshots(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Each snapshot this backup made, with the components it holds."""
        if self.made:
            return self.made
        return ((self.snapshot_id, self.components),) if self.snapshot_id else ()


@dataclass(frozen=True)
class BackupStatus:
    """Numbers a metrics exporter reads: last success per component, count, last drill."""

    last_success: dict[str, datetime]
    snapshot_count: int
    last_verified: datetime | None


@dataclass(frozen=True)
class SnapshotFile:
    path: str
    size: int


@dataclass(frozen=True)
class SnapshotDetails:
    snapshot: Snapshot
    files: tuple[SnapshotFile, ...]
    total_size: int
    data_added: int | None  # known when this process made the snapshot


@dataclass(frozen=True)
class ForgetResult:
    kept: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    output_tail: str


@dataclass(frozen=True)
class FileVerification:
    """A restored file checked with `PRAGMA integrity_check` and against its checksum."""

    component: str
    integrity: str  # "ok" or SQLite's first complaint
    checksum_matches: bool | None  # None when the snapshot carried no checksum
    size: int

    @property
    def ok(self) -> bool:
        return self.integrity == "ok" and self.checksum_matches is not False


@dataclass(frozen=True)
class DrillResult:
    """A restore drill: the latest full snapshot restored into scratch and verified."""

    snapshot_id: str  # the newest of those restored
    verified_at: datetime
    duration_seconds: float
    files: tuple[FileVerification, ...]
    # The snapshot each component was restored from (with PostgreSQL, one per component).
    snapshot_of: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)


@dataclass(frozen=True)
class TableRows:
    table: str
    rows_now: int | None  # None: the table does not exist in the live file
    rows_in_snapshot: int | None
    # What the rollback would do to the rows, by primary key (backup.row_diff); None where
    # the table is on one side only, too large to compare, or (changed) has no key.
    added: int | None = None
    removed: int | None = None
    changed: int | None = None

    @classmethod
    def between(
        cls, now: dict[str, int], then: dict[str, int], changes: dict[str, Any]
    ) -> tuple[TableRows, ...]:
        """Every table of either side, with its counts and, where known, its changes."""
        tables = []
        for table in sorted(set(now) | set(then)):
            change = changes.get(table)
            tables.append(
                cls(
                    table,
                    now.get(table),
                    then.get(table),
                    change.added if change else None,
                    change.removed if change else None,
                    change.changed if change else None,
                )
            )
        return tuple(tables)


@dataclass(frozen=True)
class ComponentPreview:
    component: str
    verification: FileVerification
    tables: tuple[TableRows, ...]


@dataclass(frozen=True)
class RollbackPreview:
    """A dry run: what rolling back to `snapshot_id` would change; nothing live was touched."""

    snapshot_id: str
    snapshot_time: datetime
    snapshot_reason: str | None
    components: tuple[ComponentPreview, ...]

    @property
    def ok(self) -> bool:
        return all(c.verification.ok for c in self.components)


@dataclass(frozen=True)
class RollbackResult:
    snapshot_id: str
    components: tuple[str, ...]
    reason: str
    safety_snapshot_id: str
    step_seconds: dict[str, float] = field(default_factory=dict)
    duration_seconds: float = 0.0
    # What the caller put back from the restored state besides the files, in words.
    notes: tuple[str, ...] = ()
    # Damaged when replaced: kept byte for byte in the safety snapshot, which cannot put
    # them back (no undo for them).
    kept_as_found: tuple[str, ...] = ()
