"""The off-host copy job: every `offsite_copy_interval_minutes`, `restic copy` moves the
snapshots the second repository lacks (backup/offsite.py), and its outcome becomes metrics:
`ers_backup_offsite_last_success_timestamp_seconds` (absent until a copy succeeded),
`ers_backup_offsite_interval_seconds` and `ers_backup_offsite_failures_total{reason}`, which
the BackupOffsiteStale alert reads. In a fleet only the holder of the jobs lock copies."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from contextlib import AsyncExitStack

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from backup import BackupError
from backup.offsite import OffsiteCopier, OffsiteRepository, shown
from backup.restic import Restic
from service.backups.metrics import FAILURE_REASONS
from service.backups.service import BackupService
from service.fleet import FleetLeader
from service.settings import Settings
from service.tasks import run_in_background

log = logging.getLogger("ers.backups.offsite")

# After a failure the copy is tried again this soon, or at its interval if that is shorter.
RETRY_AFTER_FAILURE_S = 300.0


class OffsiteMetrics:
    def __init__(self, meter: Meter, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last_success: float | None = None
        meter.create_observable_gauge(
            "ers_backup_offsite_last_success_timestamp_seconds",
            [self._observe_last_success],
            unit="s",
            description="When the last copy to the off-host repository succeeded",
        )
        meter.create_observable_gauge(
            "ers_backup_offsite_interval_seconds",
            [self._observe_interval],
            unit="s",
            description="Seconds between copies to the off-host repository",
        )
        self._failures = meter.create_counter(
            "ers_backup_offsite_failures",
            unit="1",
            description="Copies to the off-host repository that failed, by reason",
        )
        self._copied = meter.create_counter(
            "ers_backup_offsite_snapshots_copied",
            unit="1",
            description="Snapshots copied to the off-host repository",
        )
        for reason in FAILURE_REASONS:
            self._failures.add(0, {"reason": reason})

    def succeeded(self, copied: int) -> None:
        self.last_success = time.time()
        self._copied.add(copied)

    def failed(self, reason: str) -> None:
        self._failures.add(1, {"reason": reason})

    def _observe_last_success(self, options: CallbackOptions) -> Iterable[Observation]:
        return [] if self.last_success is None else [Observation(self.last_success)]

    def _observe_interval(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.interval_s)]


def build_copier(settings: Settings) -> OffsiteCopier | None:
    if not settings.offsite_repository or settings.offsite_password_file is None:
        return None
    source = Restic(
        settings.restic_repository, settings.restic_password_file, binary=settings.restic_binary
    )
    target = OffsiteRepository(settings.offsite_repository, settings.offsite_password_file)
    return OffsiteCopier(source, target)


def start_offsite_copies(
    stack: AsyncExitStack, backups: BackupService, meter: Meter, leader: FleetLeader | None
) -> None:
    """Run the copy job when an off-host repository is set; nothing otherwise."""
    copier = build_copier(backups.settings)
    if copier is None:
        return
    metrics = OffsiteMetrics(meter, backups.settings.offsite_copy_interval_minutes * 60)
    run_in_background(stack, run_offsite_copies(backups, copier, metrics, leader), "offsite")


async def copy_once(copier: OffsiteCopier, metrics: OffsiteMetrics) -> bool:
    try:
        result = await copier.copy()
    except BackupError as exc:
        metrics.failed(exc.label)
        log.error("off-host copy failed: %s", exc)
        return False
    metrics.succeeded(result.copied)
    log.info(
        "off-host copy to %s: %d snapshot(s) copied, %d already there, %.1f s",
        shown(copier.destination.repository),
        result.copied,
        result.skipped,
        result.duration_s,
    )
    return True


async def run_offsite_copies(
    backups: BackupService,
    copier: OffsiteCopier,
    metrics: OffsiteMetrics,
    leader: FleetLeader | None,
) -> None:
    """A copy as soon as the repository is reachable, then one every interval."""
    await backups.connected.wait()
    while True:
        delay = metrics.interval_s
        leading = leader is None or leader.is_leader
        if leading and not await copy_once(copier, metrics):
            delay = min(delay, RETRY_AFTER_FAILURE_S)
        await asyncio.sleep(delay)
