"""Backup metrics, as a subscriber of the backup manager's events."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from backup.events import (
    BackupFailed,
    BackupSkipped,
    BackupSucceeded,
    DrillFinished,
    RollbackFinished,
)

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
    "disk_full",
    "timeout",
    "locked",
    "unavailable",
)


class BackupMetrics:
    def __init__(
        self,
        meter: Meter,
        last_success: Callable[[], dict[str, float]],
        intervals_s: dict[str, float],
        snapshot_count: Callable[[], int],
        drill_interval_s: float = 6 * 3600,
    ) -> None:
        self._drill_interval_s = drill_interval_s
        self._last_success = last_success
        self._intervals = intervals_s
        self._snapshot_count = snapshot_count
        self.last_verified: float | None = None
        self.last_drill_ok: bool | None = None
        self._duration = meter.create_histogram(
            "ers_backup_duration_seconds",
            unit="s",
            description="Backup duration",
            explicit_bucket_boundaries_advisory=BACKUP_BUCKETS,
        )
        self._added = meter.create_counter(
            "ers_backup_added_bytes",
            unit="By",
            description="Bytes a backup added to the repository",
        )
        self._failures = meter.create_counter(
            "ers_backup_failures", unit="1", description="Failed backups by reason"
        )
        for reason in FAILURE_REASONS:
            self._failures.add(0, {"reason": reason})
        self._skips = meter.create_counter(
            "ers_backup_skips", unit="1", description="Components skipped as unchanged"
        )
        self._rollbacks = meter.create_counter(
            "ers_rollbacks", unit="1", description="Rollbacks by result"
        )
        self._rollback_duration = meter.create_histogram(
            "ers_rollback_duration_seconds",
            unit="s",
            description="Rollback duration",
            explicit_bucket_boundaries_advisory=BACKUP_BUCKETS,
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
        meter.create_observable_gauge(
            "ers_backup_snapshots", [self._observe_count], description="Snapshots in the repository"
        )
        meter.create_observable_gauge(
            "ers_backup_last_verified_timestamp_seconds",
            [self._observe_verified],
            unit="s",
            description="When a restore drill last passed",
        )
        meter.create_observable_gauge(
            "ers_restore_drill_interval_seconds",
            [lambda options: [Observation(self._drill_interval_s)]],
            unit="s",
            description="How often a restore drill runs",
        )
        meter.create_observable_gauge(
            "ers_restore_drill_success",
            [self._observe_drill],
            description="1 when the last restore drill passed, 0 when it failed",
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
            ok = event.result is not None
            self._rollbacks.add(1, {"result": "success" if ok else "failure"})
            self._rollback_duration.record(event.duration_seconds)
        elif isinstance(event, DrillFinished):
            self.record_drill(event.result.ok, event.result.verified_at.timestamp())

    def record_drill(self, ok: bool, at: float) -> None:
        self.last_drill_ok = ok
        if ok:
            self.last_verified = at

    def record_failure(self, reason: str) -> None:
        self._failures.add(1, {"reason": reason})

    def _observe_last_success(self, options: CallbackOptions) -> Iterable[Observation]:
        for component, at in self._last_success().items():
            yield Observation(at, {"component": component})

    def _observe_intervals(self, options: CallbackOptions) -> Iterable[Observation]:
        for component, seconds in self._intervals.items():
            yield Observation(seconds, {"component": component})

    def _observe_count(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._snapshot_count())

    def _observe_verified(self, options: CallbackOptions) -> Iterable[Observation]:
        if self.last_verified is not None:
            yield Observation(self.last_verified)

    def _observe_drill(self, options: CallbackOptions) -> Iterable[Observation]:
        if self.last_drill_ok is not None:
            yield Observation(int(self.last_drill_ok))
