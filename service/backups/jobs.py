"""The backup jobs that run in the background: scheduled backups, retention, prune, check
and restore drills (on one replica of a fleet), and the periodic re-read of the snapshot list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

from opentelemetry.metrics import Meter

from backup import BackupError
from backup.emergency import EmergencyCooldown
from backup.errors import Interrupted
from backup.models import DrillResult
from service.backups.fleet_list import FleetSnapshotList
from service.backups.fleet_repository import FleetRepository
from service.backups.metrics import BackupMetrics
from service.backups.offsite import start_offsite_copies
from service.backups.service import BackupService, BackupsUnavailable
from service.fleet import FleetLeader
from service.fleet.stamps import FleetStamps
from service.settings import Settings
from service.stores import Stores
from service.tasks import run_in_background

log = logging.getLogger("ers.backups")


def build_backups(
    settings: Settings,
    stores: Stores,
    incidents_path: Path,
    meter: Meter,
    set_ready: Callable[[bool, str | None], None],
    restored_with: dict[str, Callable[[], Awaitable[list[str]]]],
    *,
    first_start: bool,
    emergency_cooldown: EmergencyCooldown | None = None,
) -> BackupService | None:
    """The backup service and its metrics, or None with backups off; it reaches the
    repository once ``start_backup_jobs`` runs."""
    if not settings.backups_enabled:
        return None
    backups = BackupService(
        settings,
        stores,
        incidents_path,
        set_ready,
        restored_with,
        first_start=first_start,
        emergency_cooldown=emergency_cooldown,
    )
    metrics = BackupMetrics(
        meter,
        backups.last_success,
        backups.intervals_s,
        lambda: len(backups.manager.list()) if backups.manager else 0,
        # No drill is due with the schedule off: RestoreDrillOverdue has nothing to judge.
        drill_interval_s=(
            settings.restore_drill_interval_minutes * 60
            if settings.backup_schedule_enabled
            else None
        ),
    )
    backups.subscribe(metrics.on_event)
    return backups


def start_backup_jobs(
    stack: AsyncExitStack,
    backups: BackupService,
    stores: Stores,
    replica: str | None,
    meter: Meter | None = None,
) -> None:
    """Connect to the repository, keep the snapshot list fresh and run the schedule; on the
    way out, the shutdown backup. In a fleet (``replica``) one replica runs the schedule:
    the holder of the jobs lock, once the repository answers."""
    settings = backups.settings
    leader: FleetLeader | None = None
    url = settings.database_url
    if replica is not None and stores.database and url and settings.backup_schedule_enabled:
        leader = FleetLeader(stores.database, url.get_secret_value(), replica=replica)
        stack.push_async_callback(leader.stop)

    async def shutdown_backup() -> None:
        # In a fleet the state outlives this replica: the jobs' runner backs it up.
        if leader is None or leader.is_leader:
            await backups.shutdown_backup()
        else:
            log.info(
                "no final backup from this replica: the state on PostgreSQL outlives it, and "
                "the replica that runs the fleet jobs backs it up on its schedule and when it "
                "stops itself"
            )

    stack.push_async_callback(shutdown_backup)
    run_in_background(stack, backups.connect(), "backups-connect")
    run_in_background(stack, run_refresh(backups), "backups-refresh")
    if replica is not None and stores.database is not None:
        shared = FleetSnapshotList(backups, FleetStamps(stores.database), replica)
        backups.subscribe(shared.on_event)
        every_s = settings.fleet_poll_interval_s
        run_in_background(stack, shared.follow(every_s), "backups-fleet-list")
        repository = FleetRepository(backups, stores.system_state, replica)
        backups.subscribe(repository.on_event)
        run_in_background(stack, repository.follow(every_s), "backups-fleet-repository")
    if settings.backup_schedule_enabled:
        run_in_background(stack, run_schedule(backups, leader=leader), "backups")
        if meter is not None:
            start_offsite_copies(stack, backups, meter, leader)


async def run_refresh(backups: BackupService) -> None:
    """Re-read the snapshot list every `backup_refresh_interval_s`: `ers backup
    --offline` and other replicas add and forget snapshots too."""
    await backups.connected.wait()
    while True:
        await asyncio.sleep(backups.settings.backup_refresh_interval_s)
        try:
            await backups.refresh()
        except (BackupError, BackupsUnavailable) as exc:
            log.error("refreshing the snapshot list failed: %s", exc)


async def run_schedule(
    backups: BackupService, tick_s: float = 30.0, leader: FleetLeader | None = None
) -> None:
    """Scheduled backups, retention, prune, check and restore drills, one at a time;
    in a fleet, only while this replica holds the fleet jobs lock (``leader``)."""
    await backups.connected.wait()
    backups.leader = leader
    if leader is not None:
        # Only a replica that can reach the repository competes for the jobs.
        leader.start()
    next_prune = time.time() + backups.settings.prune_interval_hours * 3600
    next_check = time.time() + backups.settings.repository_check_interval_hours * 3600
    leading = leader is None
    while True:
        if leader is not None and not leader.is_leader:
            leading = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick_s):
                    await leader.wait_leader()
            if not leader.is_leader:
                # The runner's backups, for this replica's backup-age check.
                with contextlib.suppress(BackupError, BackupsUnavailable):
                    await backups.require().refresh()
            continue
        try:
            if not leading:
                # Taking the jobs over: what the previous runner backed up is in the
                # repository, not yet in this replica's list; prune and check wait
                # their full interval from now.
                await backups.require().refresh()
                now = time.time()
                next_prune = now + backups.settings.prune_interval_hours * 3600
                next_check = now + backups.settings.repository_check_interval_hours * 3600
                leading = True
            await _due_backups(backups)
            now = time.time()
            if drill_due(backups, now):
                await drill(backups)
            if now >= next_prune:
                every = backups.settings.prune_interval_hours * 3600
                next_prune = await _periodic("prune", _forget_and_prune(backups), now, every)
            if now >= next_check:
                every = backups.settings.repository_check_interval_hours * 3600
                next_check = await _periodic("repository check", backups.check(), now, every)
        except Interrupted as exc:
            log.warning("scheduled backup work did not finish: %s", exc)
        except (BackupError, BackupsUnavailable) as exc:
            log.error("scheduled backup work failed: %s", exc)
        await asyncio.sleep(tick_s)


# A failed prune or check is tried again this soon (or at its interval if shorter): on
# every tick, each attempt locked the repository alone (turning people's requests into
# waits), and a prune that kept failing kept the check from ever running.
PERIODIC_RETRY_S = 900.0


async def _periodic(what: str, job: Awaitable[object], now: float, every_s: float) -> float:
    """Run one periodic job; when it is due next."""
    try:
        await job
    except Interrupted as exc:
        log.warning("scheduled %s did not finish: %s", what, exc)
        return now  # stopped, not failed: due again
    except (BackupError, BackupsUnavailable) as exc:
        retry_s = min(every_s, PERIODIC_RETRY_S)
        log.error("scheduled %s failed: %s; tried again in %.0f s", what, exc, retry_s)
        return now + retry_s
    return now + every_s


async def _forget_and_prune(backups: BackupService) -> None:
    # Snapshots added elsewhere (`ers backup --offline`) are forgotten here too.
    await forget(backups)
    await backups.require().prune()


async def _due_backups(backups: BackupService) -> bool:
    """The backups that are due; True when one made a snapshot. Retention runs only then:
    `restic forget` locks the repository for itself (and writes a lock file to a remote one),
    so running it on every tick would turn people's test rollbacks away for nothing."""
    now = time.time()
    last = backups.last_success()
    full = backups.last_full()
    if full is None or now - full >= backups.full_interval_s:
        result = await backups.create(None, "scheduled")
    else:
        due = [c for c, every in backups.intervals_s.items() if now - last.get(c, 0) >= every]
        if not due:
            return False
        result = await backups.create(due, "scheduled")
    if result.snapshot_id is None:
        return False
    await forget(backups)
    return True


async def forget(backups: BackupService) -> None:
    await backups.require().forget(keep_last=backups.settings.max_backups)


# A failed drill runs again before its schedule: this long after it, and at once when a full
# snapshot newer than it exists (the fix its runbook gives ends with one), so that its health
# check and alert end soon after the cause does.
DRILL_RETRY_S = 900.0


def drill_due(backups: BackupService, now: float) -> bool:
    every = backups.settings.restore_drill_interval_minutes * 60
    last = backups.last_drill_at
    if last is None or now - last >= every:
        return True
    if backups.last_drill_ok is not False:
        return False
    full = backups.last_full()
    return now - last >= DRILL_RETRY_S or (full is not None and full > last)


async def drill(backups: BackupService) -> bool:
    before, backups.last_drill_at = backups.last_drill_at, time.time()
    try:
        result = await backups.require().verify_latest()
    except Interrupted as exc:
        # Stopped with the service (systemd signals every process of the unit) or by hand:
        # it says nothing of the backups, and the drill stays due.
        backups.last_drill_at = before
        log.warning("restore drill did not finish: %s; it runs again", exc)
        return False
    except BackupError as exc:
        problem = str(exc)
    else:
        problem = drill_problem(result)
    backups.last_drill_ok = problem is None
    backups.last_drill_problem = problem
    if problem is not None:
        # A drill that restored and found damage raises nothing: without this line the
        # health check's "failed" was all an operator had to go on.
        log.error("restore drill failed: %s", problem)
    return problem is None


def drill_problem(result: DrillResult) -> str | None:
    """What the drill found wrong, with the components it concerns (one failed restore of
    a snapshot holding several is said once), and the snapshot they came from; None when
    every file verified."""
    components: dict[str, list[str]] = {}
    for f in result.files:
        if not f.ok:
            found = f.integrity if f.integrity != "ok" else "checksum differs from the snapshot's"
            components.setdefault(found, []).append(f.component)
    if not components:
        return None

    def source(component: str) -> str:
        return result.snapshot_of.get(component, result.snapshot_id)[:8]

    sources = {source(c) for names in components.values() for c in names}
    if len(sources) == 1:  # one snapshot (always with SQLite): named once
        problems = "; ".join(f"{', '.join(names)}: {found}" for found, names in components.items())
        return f"snapshot {next(iter(sources))}: {problems}"
    return "; ".join(
        ", ".join(f"{c} (snapshot {source(c)})" for c in names) + f": {found}"
        for found, names in components.items()
    )
