"""Backup metrics, as a subscriber of the backup manager's events."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Counter, Meter, Observation

from backup.events import (
    BackupFailed,
    BackupSkipped,
    BackupSucceeded,
    DrillFinished,
    RollbackFinished,
)
from service.resilience.instruments import event_counter, seconds_histogram, value_gauge

BACKUP_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
# Every failure reason starts at 0, so increase() sees a reason's first failure.
FAILURE_REASONS = (
    "error",
    "staging",
    "command_failed",
    "not_installed",
    "repository_not_found",
    "repository_replaced",
    "wrong_password",
    "password_file",
    "read_only",
    "disk_full",
    "timeout",
    "interrupted",
    "locked",
    "unavailable",
    "pg_dump_failed",
    "pg_tool_not_installed",
)


def failure_counter(meter: Meter, name: str, description: str) -> Counter:
    """A counter of failures by ``reason``, every reason at 0 from the start."""
    failures = event_counter(meter, name, description)
    for reason in FAILURE_REASONS:
        failures.add(0, {"reason": reason})
    return failures


class BackupMetrics:
    def __init__(
        self,
        meter: Meter,
        last_success: Callable[[], dict[str, float]],
        intervals_s: dict[str, float],
        snapshot_count: Callable[[], int],
        drill_interval_s: float | None = 6 * 3600,
    ) -> None:
        self._last_success = last_success
        self._intervals = intervals_s
        self.last_verified: float | None = None
        self.last_drill_ok: bool | None = None
        self._duration = seconds_histogram(
            meter, "ers_backup_duration_seconds", "Backup duration", BACKUP_BUCKETS
        )
        self._added = meter.create_counter(
            "ers_backup_added_bytes",
            unit="By",
            description="Bytes a backup added to the repository",
        )
        self._failures = failure_counter(meter, "ers_backup_failures", "Failed backups by reason")
        self._skips = event_counter(meter, "ers_backup_skips", "Components skipped as unchanged")
        self._rollbacks = event_counter(meter, "ers_rollbacks", "Rollbacks by result")
        self._rollback_duration = seconds_histogram(
            meter, "ers_rollback_duration_seconds", "Rollback duration", BACKUP_BUCKETS
        )
        meter.create_observable_gauge(
            "ers_backup_last_success_timestamp_seconds",
            [self._observe_last_success],
            unit="s",
            description="When each component was last backed up successfully",
        )
        meter.create_observable_gauge(
            "ers_backup_interval_seconds",
            [self._observe_intervals],
            unit="s",
            description="Each component's backup schedule",
        )
        value_gauge(meter, "ers_backup_snapshots", "Snapshots in the repository", snapshot_count)
        value_gauge(
            meter,
            "ers_backup_last_verified_timestamp_seconds",
            "When a restore drill last passed",
            lambda: self.last_verified,
            unit="s",
        )
        value_gauge(
            meter,
            "ers_restore_drill_interval_seconds",
            "How often a restore drill runs",
            lambda: drill_interval_s,
            unit="s",
        )
        value_gauge(
            meter,
            "ers_restore_drill_success",
            "1 when the last restore drill passed, 0 when it failed",
            lambda: None if self.last_drill_ok is None else int(self.last_drill_ok),
        )

    def on_event(self, event: object) -> None:
        if isinstance(event, BackupSucceeded):
            result = event.result
            self._duration.record(result.duration_seconds)
            self._added.add(result.data_added)
        elif isinstance(event, BackupSkipped):
            for component in event.result.skipped:
                self._skips.add(1, {"component": component})
        elif isinstance(event, BackupFailed):
            self._failures.add(1, {"reason": event.error_label})
        elif isinstance(event, RollbackFinished):
            self._rollbacks.add(1, {"result": "success" if event.ok else "failure"})
            self._rollback_duration.record(event.duration_seconds)
        elif isinstance(event, DrillFinished):
            self.last_drill_ok = event.result.ok
            if event.result.ok:
                self.last_verified = event.result.verified_at.timestamp()

    def _observe_last_success(self, options: CallbackOptions) -> Iterable[Observation]:
        for component, at in self._last_success().items():
            yield Observation(at, {"component": component})

    def _observe_intervals(self, options: CallbackOptions) -> Iterable[Observation]:
        for component, seconds in self._intervals.items():
            yield Observation(seconds, {"component": component})
