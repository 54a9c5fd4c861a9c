"""The off-host copy job: every `offsite_copy_interval_minutes`, `restic copy` moves the
snapshots the second repository lacks (backup/offsite.py), and its outcome becomes metrics:
`ers_backup_offsite_last_success_timestamp_seconds` (absent until a copy succeeded),
`ers_backup_offsite_interval_seconds` and `ers_backup_offsite_failures_total{reason}`, which
the BackupOffsiteStale alert reads. In a fleet only the holder of the jobs lock copies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import TypeVar

from opentelemetry.metrics import Meter

from backup import BackupError
from backup.offsite import OffsiteCopier, OffsiteRepository, shown
from backup.restic import Restic
from service.backups.metrics import failure_counter
from service.backups.service import BackupService
from service.fleet import FleetLeader
from service.resilience.instruments import event_counter, value_gauge
from service.settings import Settings
from service.tasks import cancel_and_wait, run_in_background

log = logging.getLogger("ers.backups.offsite")

T = TypeVar("T")

# The off-host repository's id, once the first copy made or reached it.
OFFSITE_RECORD_FILE = "offsite-repository.json"

# After a failure the copy is tried again this soon, or at its interval if that is shorter.
RETRY_AFTER_FAILURE_S = 300.0


class OffsiteMetrics:
    def __init__(self, meter: Meter, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last_success: float | None = None
        value_gauge(
            meter,
            "ers_backup_offsite_last_success_timestamp_seconds",
            "When the last copy to the off-host repository succeeded",
            lambda: self.last_success,
            unit="s",
        )
        value_gauge(
            meter,
            "ers_backup_offsite_interval_seconds",
            "Seconds between copies to the off-host repository",
            lambda: self.interval_s,
            unit="s",
        )
        self._failures = failure_counter(
            meter,
            "ers_backup_offsite_failures",
            "Copies to the off-host repository that failed, by reason",
        )
        self._copied = event_counter(
            meter,
            "ers_backup_offsite_snapshots_copied",
            "Snapshots copied to the off-host repository",
        )

    def succeeded(self, copied: int) -> None:
        self.last_success = time.time()
        self._copied.add(copied)

    def failed(self, reason: str) -> None:
        self._failures.add(1, {"reason": reason})


def build_copier(settings: Settings) -> OffsiteCopier | None:
    if not settings.offsite_repository or settings.offsite_password_file is None:
        return None
    source = Restic(
        settings.restic_repository, settings.restic_password_file, binary=settings.restic_binary
    )
    target = OffsiteRepository(settings.offsite_repository, settings.offsite_password_file)
    return OffsiteCopier(source, target, record_file=settings.data_dir / OFFSITE_RECORD_FILE)


def start_offsite_copies(
    stack: AsyncExitStack, backups: BackupService, meter: Meter, leader: FleetLeader | None
) -> None:
    """Run the copy job when an off-host repository is set; nothing otherwise."""
    copier = build_copier(backups.settings)
    if copier is None:
        return
    metrics = OffsiteMetrics(meter, backups.settings.offsite_copy_interval_minutes * 60)
    run_in_background(stack, run_offsite_copies(backups, copier, metrics, leader), "offsite")


async def copy_once(
    copier: OffsiteCopier,
    metrics: OffsiteMetrics,
    sharing: AbstractAsyncContextManager[None] | None = None,
) -> bool:
    """One copy; `sharing` is held around it (the manager's `sharing_repository`), so the
    service's own forget, prune and check never meet the copy's lock on the repository."""
    try:
        async with sharing or contextlib.nullcontext():
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
    """A copy as soon as the repository is reachable, then one every interval. In a fleet
    only the holder of the jobs lock copies: at once when it takes the lock (when the former
    holder last copied is not known here), then every interval while it holds it; a copy
    under way when the replica notices it lost the lock is stopped, so that it does not run
    on beside the new holder's."""
    await backups.connected.wait()
    while True:
        if leader is not None and not leader.is_leader:
            await leader.wait_leader()
        sharing = backups.require().sharing_repository()
        copied = await _while_leading(leader, copy_once(copier, metrics, sharing))
        if copied is None:
            log.warning("off-host copy stopped: this replica no longer holds the jobs lock")
            continue
        delay = metrics.interval_s if copied else min(metrics.interval_s, RETRY_AFTER_FAILURE_S)
        await _while_leading(leader, asyncio.sleep(delay))


async def _while_leading(leader: FleetLeader | None, work: Awaitable[T]) -> T | None:
    """``work``'s result; None when this replica stepped down from the jobs lock first,
    ``work`` then cancelled (a copy's restic stopped)."""
    if leader is None:
        return await work
    task = asyncio.ensure_future(work)
    stepped_down = asyncio.ensure_future(leader.wait_not_leader())
    try:
        await asyncio.wait({task, stepped_down}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped = not task.done()
        await cancel_and_wait(task, stepped_down)
    return None if stopped else task.result()
