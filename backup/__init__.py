"""Backups of the ERS state with restic: consistent copies, snapshots, retention, rollback.

This package knows nothing of the service; the service wires it in through `BackupManager`,
over the SQLite files (`BackupConfig`) or the PostgreSQL schemas (`PgBackupConfig`).
"""

from backup.errors import (
    BackupError,
    DiskFull,
    InvalidBackupReason,
    InvalidSnapshotId,
    RepositoryLocked,
    RepositoryMissing,
    RepositoryNotFound,
    RepositoryReplaced,
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
    validate_reason,
    validate_snapshot_id,
)
from backup.files import BackupConfig
from backup.manager import BackupManager
from backup.models import (
    BackupReason,
    BackupResult,
    BackupStatus,
    BackupSummary,
    RollbackPreview,
    RollbackResult,
    Snapshot,
    SnapshotDetails,
)
from backup.pg import PgBackupConfig
from backup.repository import RepositoryConfig, init_repository, open_repository

__all__ = [
    "BackupConfig",
    "BackupError",
    "BackupManager",
    "BackupReason",
    "BackupResult",
    "BackupStatus",
    "BackupSummary",
    "DiskFull",
    "InvalidBackupReason",
    "InvalidSnapshotId",
    "PgBackupConfig",
    "RepositoryConfig",
    "RepositoryLocked",
    "RepositoryMissing",
    "RepositoryNotFound",
    "RepositoryReplaced",
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
    "init_repository",
    "open_repository",
    "validate_reason",
    "validate_snapshot_id",
]
