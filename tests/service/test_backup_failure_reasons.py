"""Every reason a backup or an off-host copy can fail with is exported at 0 from the start,
so a rule's increase() sees its first failure: a reason first seen at 1 has no earlier
sample, and increase() over it is 0."""

from __future__ import annotations

import backup.errors
from backup.errors import BackupError
from service.backups.metrics import FAILURE_REASONS

# Reasons only a request's own answer carries (a rollback's or a lookup's), never a backup's.
NOT_A_BACKUPS = {
    "invalid_reason",
    "invalid_snapshot_id",
    "pg_restore_failed",
    "rollback_failed",
    "rollback_in_progress",
    "rollback_refused",
    "snapshot_not_found",
    "unknown_component",
}


def test_every_reason_a_backup_can_fail_with_starts_at_zero() -> None:
    labels = {
        kind.label
        for kind in vars(backup.errors).values()
        if isinstance(kind, type) and issubclass(kind, BackupError)
    }
    assert labels - NOT_A_BACKUPS - set(FAILURE_REASONS) == set()
