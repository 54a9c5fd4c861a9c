"""The JSON shapes of backups, one each: the routes answer with them, and `ers backup
--offline` prints the same, so a script reads one shape whether the service runs or not."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from backup import BackupResult, RollbackPreview, RollbackResult, Snapshot
from backup.lineage import RollbackMark, passed_over
from backup.models import SnapshotDetails
from backup.repository import InitOutcome


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def init_reply(outcome: InitOutcome) -> dict[str, Any]:
    """`alreadyInUse`: the repository is the one the backups went to before this `init`."""
    repository_id = outcome.identity.expected_id
    return {
        "repositoryId": repository_id,
        "created": outcome.created,
        "previousRepositoryId": outcome.previous_id,
        "alreadyInUse": outcome.previous_id == repository_id,
    }


def listed(snapshots: Sequence[Snapshot], marks: Sequence[RollbackMark]) -> list[dict[str, Any]]:
    """A list's entries; ``putAside``: the components a rollback "to before" an incident
    passes over in the snapshot, whose state there a rollback has put aside (roll back to
    them by its id only knowingly)."""
    over = passed_over(snapshots, marks)
    return [snapshot_reply(s) | {"putAside": over.get(s.id, [])} for s in snapshots]


def snapshot_reply(s: Snapshot) -> dict[str, Any]:
    return {
        "backupId": s.id,
        "shortId": s.short_id,
        "time": iso(s.time),
        "components": list(s.components),
        "reason": s.reason,
        "hostname": s.hostname,
    }


def details_reply(details: SnapshotDetails) -> dict[str, Any]:
    return {
        **snapshot_reply(details.snapshot),
        "files": [{"path": f.path, "size": f.size} for f in details.files],
        "totalSize": details.total_size,
        "dataAdded": details.data_added,
    }


def created_reply(result: BackupResult, reason: str, kind: str) -> dict[str, Any]:
    summary = result.summary
    return {
        "backupId": result.snapshot_id,
        "reason": reason,
        "type": kind,
        "components": list(result.components),
        "skipped": list(result.skipped),
        "durationSeconds": round(result.duration_seconds, 3),
        # What each snapshot holds: one snapshot on SQLite, one per component on PostgreSQL
        # (``backupId`` is then the first of them).
        "snapshots": [
            {"backupId": snapshot_id, "components": list(components)}
            for snapshot_id, components in result.snapshots
        ],
        "summary": None
        if summary is None
        else {
            "filesNew": summary.files_new,
            "filesChanged": summary.files_changed,
            "dataAdded": summary.data_added,
            "totalBytesProcessed": summary.total_bytes_processed,
        },
    }


def preview_reply(preview: RollbackPreview) -> dict[str, Any]:
    """A test rollback: per component its check, and per table the rows now and after, with
    the rows the rollback would add back, remove and change (null where not compared)."""
    return {
        "backupId": preview.snapshot_id,
        "snapshotTime": iso(preview.snapshot_time),
        "snapshotReason": preview.snapshot_reason,
        "liveStateTouched": False,
        "components": {
            c.component: {
                "verification": {
                    "integrity": c.verification.integrity,
                    "checksumMatches": c.verification.checksum_matches,
                },
                "tables": {
                    t.table: {
                        "rowsNow": t.rows_now,
                        "rowsInSnapshot": t.rows_in_snapshot,
                        "added": t.added,
                        "removed": t.removed,
                        "changed": t.changed,
                    }
                    for t in c.tables
                },
            }
            for c in preview.components
        },
    }


def rollback_reply(result: RollbackResult, reason: str) -> dict[str, Any]:
    return {
        "rolledBack": True,
        "backupId": result.snapshot_id,
        "components": list(result.components),
        "safetyBackupId": result.safety_snapshot_id,
        "stepSeconds": {k: round(v, 3) for k, v in result.step_seconds.items()},
        "durationSeconds": round(result.duration_seconds, 3),
        "reason": reason,
        "restored": list(result.notes),
        "keptAsFound": list(result.kept_as_found),
    }


def made(result: BackupResult) -> str:
    """The snapshots of a backup in words: ``snapshot 1a2b3c4d``, or on PostgreSQL (one per
    component) ``snapshots 1a2b3c4d (budgets), 5e6f7a8b (profiles)``."""
    snapshots = result.snapshots
    if len(snapshots) <= 1:
        return f"snapshot {(result.snapshot_id or '')[:8]}"
    each = ", ".join(f"{i[:8]} ({', '.join(components)})" for i, components in snapshots)
    return f"snapshots {each}"


def human_size(size: int) -> str:
    """In the decimal units it names (the seed's "2.4 GB"); the CLI's KiB and MiB are binary."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1000
    return f"{size} B"
