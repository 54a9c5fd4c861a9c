"""Backups of the ERS state with restic: consistent copies, snapshots, retention, rollback.

This package knows nothing of the service; the service wires it in through `BackupManager`.
"""

from backup.errors import (
    BackupError,
    DiskFull,
    InvalidSnapshotId,
    RepositoryLocked,
    RepositoryNotFound,
    ResticCommandFailed,
    ResticError,
    ResticNotInstalled,
    ResticTimeout,
    RollbackFailed,
    RollbackRefused,
    SnapshotNotFound,
    StagingFailed,
    UnknownComponent,
    WrongPassword,
    validate_snapshot_id,
)
from backup.manager import BackupConfig, BackupManager, BackupStatus
from backup.models import (
    BackupReason,
    BackupResult,
    BackupSummary,
    RollbackPreview,
    RollbackResult,
    Snapshot,
    SnapshotDetails,
)
from backup.repository import RepositoryConfig, open_repository

__all__ = [
    "BackupConfig",
    "BackupError",
    "BackupManager",
    "BackupReason",
    "BackupResult",
    "BackupStatus",
    "BackupSummary",
    "DiskFull",
    "InvalidSnapshotId",
    "RepositoryConfig",
    "RepositoryLocked",
    "RepositoryNotFound",
    "ResticCommandFailed",
    "ResticError",
    "ResticNotInstalled",
    "ResticTimeout",
    "RollbackFailed",
    "RollbackPreview",
    "RollbackRefused",
    "RollbackResult",
    "Snapshot",
    "SnapshotDetails",
    "SnapshotNotFound",
    "StagingFailed",
    "UnknownComponent",
    "WrongPassword",
    "open_repository",
    "validate_snapshot_id",
]
