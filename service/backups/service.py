"""The service's side of backups: the restic-backed manager wired to the stores, the
schedules, the emergency protocol, rollbacks that pause writers, and the shutdown backup.

The repository is reached in the background: a missing restic or an unreachable repository
leaves chat answering, shows in health, and is retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, cast

from backup import (
    BackupConfig,
    BackupError,
    BackupManager,
    BackupResult,
    PgBackupConfig,
    RepositoryConfig,
    RollbackResult,
    Snapshot,
    init_repository,
)
from backup.backend import BackendConfig
from backup.emergency import EmergencyCooldown
from backup.errors import ResticTimeout
from backup.events import RepositoryInitialised
from backup.identity import RECORD_FILE_NAME
from backup.lineage import RollbackMark, Swapped
from backup.models import CheckResult
from backup.repository import InitOutcome, adopt_repository
from service.backups.cut_off import after_the_swap
from service.backups.figures import newest_full, newest_per_component
from service.backups.first_start import backup_work_dir, first_start_done
from service.backups.fleet_cooldown import match_cooldown, none_told
from service.backups.live_size import LiveSize
from service.backups.replies import human_size, made
from service.backups.repository_look import RepositoryLook
from service.errors import ErsError
from service.fleet import FleetLeader
from service.fleet.leader import repository_init_lock, repository_turn_lock
from service.incidents.store_pg import SCHEMA as INCIDENTS_SCHEMA
from service.settings import COMPONENTS, Settings
from service.stores import Stores
from service.stores.postgres import PostgresStore
from service.stores.sqlite import SqliteStore

Marks = Sequence[RollbackMark]  # rollbacks' records
log = logging.getLogger("ers.backups")

# How long a backup request in the first moments after a start waits for the repository.
# Under the CLI's and a balancer's 30 s, so that they get the answer, not their own timeout.
FIRST_OPENING_WAIT_S = 15.0
ROLLBACK_COMPONENTS = COMPONENTS  # the state a rollback restores: all but the incidents
# What a rollback does while its components' writers are paused, in the order a person
# would follow it (the restore and the safety snapshot run side by side).
_PAUSE_STEPS = "(restore, safety snapshot, swap)"


def state_to_back_up(settings: Settings, stores: Stores, incidents_path: Path) -> BackendConfig:
    """Each component's SQLite file, or, with the state on PostgreSQL, its schema (the
    incidents are backed up beside the components, never rolled back)."""
    found = stores.by_component().items()
    if stores.database is None or settings.database_url is None:
        files = {name: cast(SqliteStore, store).path for name, store in found}
        return BackupConfig(
            components={**files, "incidents": incidents_path},
            work_dir=backup_work_dir(settings.data_dir),
        )
    schemas = {name: cast(PostgresStore, store).schema for name, store in found}
    return PgBackupConfig(
        {**schemas, "incidents": INCIDENTS_SCHEMA}, settings.database_url.get_secret_value()
    )


class EmergencyBackup(NamedTuple):
    """What an emergency backup did: ``taken`` False when a recent one covers it (its
    cooldown), which ``detail`` names instead of a new snapshot."""

    taken: bool
    detail: str


class BackupsUnavailable(ErsError):
    """The backup repository cannot be used right now."""


class BackupService:
    def __init__(
        self,
        settings: Settings,
        stores: Stores,
        incidents_path: Path,
        set_ready: Callable[[bool, str | None], None],
        restored_with: dict[str, Callable[[], Awaitable[list[str]]]] | None = None,
        *,
        first_start: bool = False,
        emergency_cooldown: EmergencyCooldown | None = None,
    ) -> None:
        """``restored_with``: per component, what to put back from its store after a
        rollback of it (e.g. the breakers' isolations), returning what it did in words.
        ``emergency_cooldown``: the one kept across restarts (else one of this process)."""
        self.settings = settings
        self.emergency_cooldown = emergency_cooldown or EmergencyCooldown(
            settings.emergency_backup_cooldown_s
        )
        self._restored_with = restored_with or {}
        self.stores = stores
        self.state = state_to_back_up(settings, stores, incidents_path)
        minutes = settings.backup_interval_minutes
        self.intervals_s = {
            **{name: getattr(minutes, name) * 60 for name in ROLLBACK_COMPONENTS},
            "incidents": minutes.full_system * 60,
        }
        self.full_interval_s = minutes.full_system * 60
        self._set_ready = set_ready
        self.manager: BackupManager | None = None
        self.error: str | None = "connecting to the backup repository"
        # The last reason the repository could not be opened, for the health check.
        self.failure: BackupError | None = None
        # A start that found no state may create the repository; any other needs `init`.
        self.may_create_repository = first_start
        self._retry_now = asyncio.Event()
        self.connected = asyncio.Event()
        # Set once the first attempt to open the repository has ended, however it ended.
        self.first_attempt_done = asyncio.Event()
        self.connection_failures = 0
        # When the live state's size was read, and what it was (or why it was not known).
        self._live_size = LiveSize(lambda: self.require().backend.live_sizes())
        # What the status says of the repository's problem (restic asked in the background).
        self.repository_look = RepositoryLook()
        self._listeners: list[Callable[[object], None]] = []
        self.started_at = time.time()
        self.last_drill_at: float | None = None
        self.last_drill_ok: bool | None = None
        self.last_drill_problem: str | None = None  # what the last failed drill found
        self.check_problem: str | None = None  # what the last `restic check` found wrong
        self.told: Callable[[], Awaitable[list[RollbackMark]]] = none_told  # rollbacks unrecorded
        # In a fleet: the jobs lock; the schedule runs while this replica holds it.
        self.leader: FleetLeader | None = None

    # --- connection ---------------------------------------------------------------------

    def subscribe(self, listener: Callable[[object], None]) -> None:
        self._listeners.append(listener)
        if self.manager is not None:
            self.manager.subscribe(listener)

    def repository_config(self) -> RepositoryConfig:
        settings = self.settings
        database, url = self.stores.database, settings.database_url
        # Replicas sharing a database share the repository: one creates it, and their restic
        # commands take turns on it as one process's do.
        fleet = (database, url.get_secret_value()) if database is not None and url else None
        return RepositoryConfig(
            repository=settings.restic_repository,
            password_file=settings.restic_password_file,
            binary=settings.restic_binary,
            init_lock=partial(repository_init_lock, *fleet) if fleet else None,
            turn_lock=partial(repository_turn_lock, *fleet) if fleet else None,
            record_file=settings.data_dir / RECORD_FILE_NAME,
        )

    async def connect(self, max_delay_s: float = 60.0) -> None:
        """Reach the repository, retrying with backoff (at once after `init`); it is created
        here only on the first start of a brand-new data directory."""
        try:
            await self._connect(max_delay_s)
        finally:  # however it ended, no request waits for a first attempt in vain
            self.first_attempt_done.set()

    async def _connect(self, max_delay_s: float) -> None:
        delay = 1.0
        settings = self.settings
        repository = self.repository_config()
        while self.manager is None:
            self._retry_now.clear()  # an `init` from now on cuts the wait after a failure
            try:
                manager = await BackupManager.open(
                    repository,
                    self.state,
                    may_create=self.may_create_repository,
                    emergency_cooldown=self.emergency_cooldown,
                    shutdown_timeout_seconds=settings.shutdown_backup_timeout_s,
                )
            except Exception as exc:
                if isinstance(exc, OSError):  # its work folder cannot be made
                    exc = BackupError(f"the backups' own files cannot be written: {exc}")
                elif not isinstance(exc, BackupError):  # a defect: told, and tried again
                    log.exception("opening the backup repository failed")
                    exc = BackupError(f"opening the repository failed: {exc!r}")
                self.connection_failures += 1
                self.error, self.failure = str(exc), exc
                self.first_attempt_done.set()
                log.warning("backups unavailable (%s); retrying in %.0f s", exc, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._retry_now.wait()
                delay = min(max_delay_s, delay * 2)
                continue
            for listener in self._listeners:
                manager.subscribe(listener)
            self.manager, self.error, self.failure = manager, None, None
            self.may_create_repository = False
            first_start_done(settings.data_dir)  # the repository is recorded now
            self.connected.set()
            self.first_attempt_done.set()
            log.info("backup repository ready: %d snapshots", len(manager.list()))

    async def init(self, adopted_id: str | None = None) -> InitOutcome:
        """`ers backup init`: create the repository if there is none and make it the one the
        backups go to; a waiting connection retries at once. With `adopted_id` (what another
        replica's init made the fleet's repository) that one is adopted, never created."""
        config = self.repository_config()
        if adopted_id is None:
            outcome = await init_repository(config)
            event = RepositoryInitialised(outcome.identity.expected_id, outcome.created)
            for listener in self._listeners:
                listener(event)
        else:
            outcome = await adopt_repository(config, adopted_id)
        if self.manager is not None:
            self.manager.identity = outcome.identity
            await self.manager.refresh()
        else:
            self._retry_now.set()
        same = not outcome.created and outcome.previous_id == outcome.identity.expected_id
        log.warning(
            "backup repository %s %s (recorded before: %s)",
            outcome.identity.expected_id[:8],
            "kept: it was the one in use" if same else "created" if outcome.created else "adopted",
            (outcome.previous_id or "none")[:8],
        )
        return outcome

    async def refresh(self) -> list[Snapshot]:
        """The list read again; a repository not reached (put back since?) is tried first."""
        if self.manager is None:
            failures = self.connection_failures
            self._retry_now.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FIRST_OPENING_WAIT_S):
                    while self.manager is None and self.connection_failures == failures:
                        await asyncio.sleep(0.1)
        return await self.require().refresh()

    async def first_opening(self, wait_s: float = FIRST_OPENING_WAIT_S) -> None:
        """Waits, at most ``wait_s``, for the first attempt to open the repository (on a
        first start, its creation) to end: a request sent just after a start is answered
        with what happened, not with "connecting"."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self.first_attempt_done.wait()

    def require(self) -> BackupManager:
        if self.manager is None:
            # The cause, when there is one, is what the route reports on its span.
            raise BackupsUnavailable(f"backups are not available: {self.error}") from self.failure
        return self.manager

    # --- figures ------------------------------------------------------------------------

    def last_success(self) -> dict[str, float]:
        return newest_per_component(self.manager)

    def last_full(self) -> float | None:
        return newest_full(self.manager)

    async def summary(self) -> dict[str, Any]:
        """The count, the newest and the live state's size (None, with `sizeError`, when
        the size cannot be read; None, with `error`, while the repository is not reached)."""
        if self.manager is None:
            return {"available": 0, "lastBackup": None, "totalSize": None, "error": self.error}
        if problem := await self.repository_look.problem(self.manager):
            # The count is of a list in memory, of snapshots that may no longer exist.
            return {"available": 0, "lastBackup": None, "totalSize": None, "error": problem}
        snapshots = self.manager.list()
        last = max((s.time for s in snapshots), default=None)
        reply: dict[str, Any] = {
            "available": len(snapshots),
            "lastBackup": last.isoformat().replace("+00:00", "Z") if last else None,
        }
        size = await self._live_size.get()
        if isinstance(size, int):
            reply["totalSize"] = human_size(size)
        else:
            reply |= {"totalSize": None, "sizeError": size}
        return reply

    # --- operations ---------------------------------------------------------------------

    async def create(
        self, components: list[str] | None, reason: str, *, skip_unchanged: bool = True
    ) -> BackupResult:
        with self.repository_look.watching():
            return await self.require().create(components, reason, skip_unchanged=skip_unchanged)

    async def emergency(self, why: str) -> EmergencyBackup:
        fleet = self.stores.system_state if self.settings.database_url is not None else None
        await match_cooldown(self.emergency_cooldown, self.require(), fleet, await self.told())
        result = await self.create(None, "emergency")
        if result.coalesced:
            age = (datetime.now(UTC) - result.started_at).total_seconds()
            return EmergencyBackup(
                False,
                f"an emergency backup ran {int(age)} s ago, within the cooldown of "
                f"{self.settings.emergency_backup_cooldown_s:g} s: {made(result)}",
            )
        return EmergencyBackup(True, f"emergency {made(result)} ({why[:100]})")

    async def rollback(
        self,
        snapshot_id: str,
        components: list[str] | None,
        reason: str,
        swapped: Swapped | None = None,
    ) -> RollbackResult:
        manager = self.require()
        names = components or await manager.rollback_components(snapshot_id)
        stores = [self.stores.by_component()[name] for name in names]

        @contextlib.asynccontextmanager
        async def pause_writers() -> AsyncIterator[None]:
            # The pause spans the restore and the safety snapshot as well as the swap.
            self._set_ready(
                False, f"a rollback is replacing the state of {', '.join(names)} {_PAUSE_STEPS}"
            )
            try:
                with self.stores.paused(
                    names, f"a rollback is replacing this store {_PAUSE_STEPS}; retry shortly"
                ):
                    yield
            finally:
                self._set_ready(True, None)

        def reopen() -> None:
            for store in stores:
                store.open()

        notes: list[str] = []

        async def then(result: RollbackResult) -> None:
            # As the swap commits, beside its record: a reply it made untrue ("Recorded
            # $57.00") is replayed for a moment, not for the second the record takes.
            try:
                if swapped is not None:
                    await swapped(result)
            finally:
                notes.extend(await after_the_swap(self._restored_with, names))

        # A store a call found damaged is in the safety snapshot as it was: no undo for it.
        damaged = {name for name in names if getattr(self.stores.by_component()[name], "damage", 0)}
        with self.repository_look.watching():
            result = await manager.rollback(
                snapshot_id, names, reason, pause_writers, reopen, swapped=then
            )
        self.emergency_cooldown.end()  # its snapshot holds the state put aside: for the fleet
        if damaged - set(result.kept_as_found):
            kept = tuple(sorted({*result.kept_as_found, *damaged}))
            result = dataclasses.replace(result, kept_as_found=kept)
        return dataclasses.replace(result, notes=(*result.notes, *notes)) if notes else result

    async def check(self) -> CheckResult:
        """`restic check`; what it found wrong stays in the repository health check until
        a check passes."""
        result = await self.require().check()
        self.check_problem = None if result.ok else result.output_tail
        if not result.ok:
            log.error("the repository check found problems: %s", result.output_tail)
        return result

    def newest_before(self, moment: datetime, parts: Sequence[str], also: Marks = ()) -> str | None:
        """``also``: rollbacks the trail tells of, with no record in the repository (yet)."""
        snapshot = self.require().newest_snapshot_before(moment, parts, also)
        return snapshot.id if snapshot is not None else None

    @property
    def one_component_per_snapshot(self) -> bool:
        """On PostgreSQL a snapshot holds one component (a pg_dump of its schema)."""
        return self.state.one_component_per_snapshot

    async def shutdown_backup(self) -> None:
        if self.manager is None:
            return
        limit, started = self.settings.shutdown_backup_timeout_s, time.monotonic()
        try:
            await self.manager.shutdown_backup(limit)
        except (BackupError, TimeoutError) as exc:  # its own bound (no command's) is named
            timed_out = isinstance(exc, ResticTimeout | TimeoutError)
            cut = timed_out and time.monotonic() - started >= limit - 0.5
            bound = f" (ERS_SHUTDOWN_BACKUP_TIMEOUT_S={limit:g})" if cut else ""
            log.error("final backup failed: %s%s", exc, bound)
