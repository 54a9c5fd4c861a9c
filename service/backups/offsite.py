"""The off-host copy job: every `offsite_copy_interval_minutes`, `restic copy` moves the
snapshots the second repository lacks (backup/offsite.py), and its outcome becomes metrics:
`ers_backup_offsite_last_success_timestamp_seconds` (absent until a copy succeeded),
`ers_backup_offsite_interval_seconds` and `ers_backup_offsite_failures_total{reason}`, which
the BackupOffsiteStale alert reads. After each copy that succeeded, the off-host repository's
own retention (`OffsiteRetention`); its failures count apart, in
`ers_backup_offsite_retention_failures_total{reason}`, and the times of its last success and
failure feed the BackupOffsiteRetentionFailing alert. In a fleet only the holder of the jobs
lock copies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
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
# A failed prune of the off-host repository is tried again after the first copy this long
# after it, or at the prune interval if that is shorter (as the local prune is).
PRUNE_RETRY_S = 900.0


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
        self._retention_failures = failure_counter(
            meter,
            "ers_backup_offsite_retention_failures",
            "Forgets and prunes of the off-host repository that failed, by reason",
        )
        self._forgotten = event_counter(
            meter,
            "ers_backup_offsite_snapshots_forgotten",
            "Snapshots the off-host repository's retention forgot",
        )
        # The newest of the two tells whether the retention's last run failed (the
        # BackupOffsiteRetentionFailing alert), in a fleet too: each is a replica's own.
        self.retention_succeeded_at: float | None = None
        self.retention_failed_at = 0.0  # 0: none has failed
        value_gauge(
            meter,
            "ers_backup_offsite_retention_last_success_timestamp_seconds",
            "When the off-host repository's forget (and its prune, when due) last succeeded",
            lambda: self.retention_succeeded_at,
            unit="s",
        )
        value_gauge(
            meter,
            "ers_backup_offsite_retention_last_failure_timestamp_seconds",
            "When a forget or prune of the off-host repository last failed (0: never)",
            lambda: self.retention_failed_at,
            unit="s",
        )

    def succeeded(self, copied: int) -> None:
        self.last_success = time.time()
        self._copied.add(copied)

    def failed(self, reason: str) -> None:
        self._failures.add(1, {"reason": reason})

    def forgot(self, count: int) -> None:
        self._forgotten.add(count)

    def retention_failed(self, reason: str) -> None:
        self.retention_failed_at = time.time()
        self._retention_failures.add(1, {"reason": reason})

    def retention_succeeded(self) -> None:
        self.retention_succeeded_at = time.time()


@dataclass
class OffsiteRetention:
    """What the off-host repository keeps: the local policy (`keep_last` snapshots of each
    component, over the snapshots tagged `tag`) applied to its own list after each copy that
    succeeded, and a prune once `next_prune` (a `time.time()`) has come."""

    keep_last: int
    tag: str
    prune_every_s: float
    next_prune: float
    # The last prune failed, and none has succeeded since: a forget alone is no success.
    prune_failed: bool = False

    async def after_copy(self, copier: OffsiteCopier, metrics: OffsiteMetrics) -> None:
        """Forget, then prune when due; a failure is the retention's, never the copy's."""
        where = shown(copier.destination.repository)
        try:
            removed = await copier.forget(self.keep_last, self.tag)
        except BackupError as exc:
            metrics.retention_failed(exc.label)
            log.error("off-host retention failed (the copy itself succeeded): %s", exc)
            return
        metrics.forgot(len(removed))
        if removed:
            log.info("off-host retention forgot %d snapshot(s) in %s", len(removed), where)
        now = time.time()
        if now < self.next_prune:
            if not self.prune_failed:  # else the failed prune stands until it is retried
                metrics.retention_succeeded()
            return
        try:
            await copier.prune()
        except BackupError as exc:
            metrics.retention_failed(exc.label)
            self.prune_failed = True
            self.next_prune = now + min(self.prune_every_s, PRUNE_RETRY_S)
            log.error("off-host prune failed (the copy itself succeeded): %s", exc)
            return
        self.prune_failed = False
        metrics.retention_succeeded()
        self.next_prune = now + self.prune_every_s
        log.info("off-host prune of %s done", where)


def offsite_keep_last(settings: Settings) -> int:
    """Snapshots of each component the off-host repository keeps: `offsite_max_backups`,
    or `max_backups` when unset."""
    return settings.offsite_max_backups or settings.max_backups


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
    *,
    verify_source: Callable[[], Awaitable[object]] | None = None,
    retention: OffsiteRetention | None = None,
) -> bool:
    """One copy; `sharing` is held around it (the manager's `sharing_repository`), so the
    service's own forget, prune and check never meet the copy's lock on the repository.
    `verify_source` first (the manager's `verify_repository`): a local repository that is
    gone or replaced is copied from no more, as its snapshots would push the real ones out
    of the off-host repository's retention. Then, once the copy succeeded, `retention`."""
    try:
        async with sharing or contextlib.nullcontext():
            if verify_source is not None:
                await verify_source()
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
    if retention is not None:
        await retention.after_copy(copier, metrics)
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
    on beside the new holder's. Each copy is followed by the off-host retention, its first
    prune one prune interval after start."""
    await backups.connected.wait()
    settings = backups.settings
    prune_every_s = settings.prune_interval_hours * 3600
    retention = OffsiteRetention(
        offsite_keep_last(settings),
        backups.require().backend.tag,
        prune_every_s,
        next_prune=time.time() + prune_every_s,
    )
    while True:
        if leader is not None and not leader.is_leader:
            await leader.wait_leader()
        manager = backups.require()
        sharing, verify = manager.sharing_repository(), manager.verify_repository
        copied = await _while_leading(
            leader, copy_once(copier, metrics, sharing, verify_source=verify, retention=retention)
        )
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
