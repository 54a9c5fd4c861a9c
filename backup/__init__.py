"""Backups of the ERS state with restic: consistent copies, snapshots, retention, rollback.

This package knows nothing of the service; the service wires it in through `BackupManager`,
over the SQLite files (`BackupConfig`) or the PostgreSQL schemas (`PgBackupConfig`).
"""

from backup.errors import (
    BackupError,
    InvalidBackupReason,
    InvalidSnapshotId,
    RepositoryMissing,
    RepositoryReplaced,
    RollbackFailed,
    RollbackRefused,
    SnapshotNotFound,
)
from backup.files import BackupConfig
from backup.inputs import validate_reason, validate_snapshot_id
from backup.manager import BackupManager
from backup.models import BackupResult, RollbackPreview, RollbackResult, Snapshot
from backup.pg import PgBackupConfig
from backup.repository import RepositoryConfig, init_repository

__all__ = [
    "BackupConfig",
    "BackupError",
    "BackupManager",
    "BackupResult",
    "InvalidBackupReason",
    "InvalidSnapshotId",
    "PgBackupConfig",
    "RepositoryConfig",
    "RepositoryMissing",
    "RepositoryReplaced",
    "RollbackFailed",
    "RollbackPreview",
    "RollbackRefused",
    "RollbackResult",
    "Snapshot",
    "SnapshotNotFound",
    "init_repository",
    "validate_reason",
    "validate_snapshot_id",
]
