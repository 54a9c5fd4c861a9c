"""What a person gives the backup library, checked before it reaches restic: snapshot ids
(they go on restic's command line) and backup reasons (they become a `reason:` tag)."""

from __future__ import annotations

import re

from backup.errors import InvalidBackupReason, InvalidSnapshotId
from backup.models import BackupReason

_SNAPSHOT_ID = re.compile(r"[0-9a-f]{8,64}")
# A reason becomes the restic tag `reason:<reason>`: restic splits tags at commas, and a
# space or colon would make the tag ambiguous to read back.
REASON_MAX_CHARS = 64
_REASON = re.compile(r"[a-z0-9][a-z0-9._-]*")


def validate_snapshot_id(value: str) -> str:
    """Return `value` if it is a restic snapshot id (8–64 lowercase hex), else raise.

    Ids reach restic's command line, so anything else (`--password-file=x`) is refused here.
    """
    if not isinstance(value, str) or not _SNAPSHOT_ID.fullmatch(value):
        shown = value[:40] if isinstance(value, str) else type(value).__name__
        if isinstance(value, str) and _SNAPSHOT_ID.fullmatch(value.lower()):
            raise InvalidSnapshotId(
                f"'{shown}' is not a snapshot id: ids are lowercase hex, as the list shows them "
                f"('{value.lower()[:40]}')"
            )
        raise InvalidSnapshotId(
            f"'{shown}' is not a snapshot id: use the 8 to 64 hex characters shown in the list"
        )
    return value


def validate_reason(value: str) -> str:
    """Return `value` if it can be a backup's `reason:` tag, else raise InvalidBackupReason."""
    if not isinstance(value, str) or not value:
        raise InvalidBackupReason("a backup reason is required, e.g. 'before-upgrade'")
    if len(value) > REASON_MAX_CHARS:
        raise InvalidBackupReason(
            f"backup reason is {len(value)} characters long: use at most {REASON_MAX_CHARS}"
        )
    if not _REASON.fullmatch(value):
        raise InvalidBackupReason(
            f"backup reason '{value}' must start with a lowercase letter or digit and hold only "
            "lowercase letters, digits, '.', '_' or '-' (no spaces, commas or colons), "
            "e.g. 'before-upgrade'"
        )
    if value == BackupReason.PRE_ROLLBACK:  # kept for a rollback's safety snapshot
        raise InvalidBackupReason(
            f"'{value}' is the reason of a rollback's own safety snapshot, which a rollback"
            " before an incident passes over unless a later rollback put it back: give another,"
            " e.g. 'before-rollback'"
        )
    return value
