"""``ers backup --offline``: the same actions straight on the repository and the data
directory, for the day the service cannot start. Each answers in the shape of the service's
route for it, so ``-o json`` and the tables are the same online and offline."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

from backup.discard import settle
from backup.lineage import unrecorded
from service.backups.first_start import backup_work_dir
from service.backups.replies import (
    created_reply,
    details_reply,
    iso,
    listed,
    preview_reply,
    rollback_reply,
)
from service.cli.offline_trail import OfflineTrail, audit_trail, undo_interrupted_swap
from service.cli.output import REFUSED, USAGE, Activity, CliError, note
from service.config_checks import unknown_variables
from service.settings import Settings, load_settings

COMPONENTS = ("conversations", "budgets", "profiles", "system_state")


def _repository_config():  # noqa: ANN202
    from backup import RepositoryConfig
    from backup.identity import RECORD_FILE_NAME

    settings = load_settings()
    return RepositoryConfig(
        settings.restic_repository,
        settings.restic_password_file,
        settings.restic_binary,
        record_file=settings.data_dir / RECORD_FILE_NAME,
    )


async def _offline_init() -> dict[str, Any]:
    from backup import init_repository
    from service.backups.replies import init_reply

    return init_reply(await init_repository(_repository_config()))


def _state_config(settings: Any) -> Any:
    """The state the service backs up: its SQLite files, or its schemas on PostgreSQL."""
    from backup import BackupConfig, PgBackupConfig

    if settings.database_url is not None:
        from service.incidents.store_pg import SCHEMA as INCIDENTS_SCHEMA
        from service.stores.postgres import schema_of

        schemas = {name: schema_of(name) for name in COMPONENTS}
        return PgBackupConfig(
            {**schemas, "incidents": INCIDENTS_SCHEMA}, settings.database_url.get_secret_value()
        )
    components = {name: settings.data_dir / f"{name}.sqlite3" for name in COMPONENTS}
    components["incidents"] = settings.data_dir / "incidents.sqlite3"
    return BackupConfig(
        components=components,
        work_dir=backup_work_dir(settings.data_dir),
    )


async def _offline_manager(owns_data_dir: bool):  # noqa: ANN202
    from backup import BackupManager

    config = _state_config(load_settings())
    # A running service owns the working files: clearing them as an interrupted run's
    # leftovers would pull them from under a rollback or backup it is running.
    return await BackupManager.open(_repository_config(), config, owns_state=owns_data_dir)


def tell_unknown_variables() -> None:
    """Each ``ERS_`` variable that names no setting, on stderr in the line ``ers serve`` logs
    for it: a misspelt ERS_DATA_DIR or ERS_RESTIC_REPOSITORY is otherwise ignored without a
    word, and the command works on the default's data directory or repository."""
    for line in unknown_variables(os.environ, Settings.model_fields):
        note(line)


# Offline actions that write the data directory, the service's working files or the
# repository's retention: refused while a service holds the state (service.fleet.datadir_lock).
OFFLINE_CHANGES = frozenset({"init", "create", "rollback", "prune"})


async def run_offline(args: argparse.Namespace, progress: Activity) -> Any:
    from service.fleet.datadir_lock import offline_access

    mutating = args.action in OFFLINE_CHANGES
    settings = load_settings()
    if args.action != "init" and not settings.data_dir.exists():
        # A mistyped ERS_DATA_DIR was made, with a lock and a repository record in it, and
        # its empty state listed as the service's.
        raise CliError(
            f"the data directory {settings.data_dir} does not exist: set ERS_DATA_DIR to the"
            " service's (its default is var/data, under the directory ERS runs in)",
            USAGE,
        )
    if args.action == "rollback" and not settings.emergency_rollback_enabled:  # as online
        raise CliError("emergency rollback is disabled (emergency_rollback_enabled=false)", REFUSED)
    if settings.database_url is None and args.action != "init":
        await _refuse_postgresql_snapshots(settings)
    result: Any = None
    try:
        async with (
            offline_access(settings, mutating=mutating) as owns_data_dir,
            _pool_quiet(),
            _every_ctrl_c_a_stop(args.action == "rollback"),
        ):
            if args.action == "init":
                result = await _offline_init()
            else:
                if owns_data_dir:
                    await undo_interrupted_swap(settings)
                manager = await _offline_manager(owns_data_dir)
                result = await _offline_action(args, manager, progress)
                # The files a rollback replaced go before the command ends, not unfinished
                # with it (until the next start).
                await asyncio.to_thread(settle)
        await asyncio.sleep(0)  # an interrupt that came meanwhile is delivered here
    except asyncio.CancelledError:
        if result is None and args.action == "rollback":  # one under way says so itself
            said = "the rollback was interrupted before it began: nothing was changed"
            raise CliError(said, INTERRUPTED) from None
        if result is None:
            raise
        # Interrupted once the work was done (a rollback that committed): it is told as done.
        if (task := asyncio.current_task()) is not None:
            task.uncancel()
    return result


@contextlib.asynccontextmanager
async def _every_ctrl_c_a_stop(rollback: bool) -> AsyncIterator[None]:
    """During a rollback each Ctrl-C stops the command's task, the second as the first
    (``asyncio.run`` raises KeyboardInterrupt at the second, anywhere): one that comes once
    the swap is done cuts short the wait for the rollback's record, and the rollback is
    printed and written in the audit trail as done, not left to read as cut off."""
    task = asyncio.current_task()
    if not rollback or task is None:
        yield
        return
    loop, runners = asyncio.get_running_loop(), signal.getsignal(signal.SIGINT)
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, runners)  # asyncio.run's, which it sets back itself


@contextlib.asynccontextmanager
async def _pool_quiet() -> AsyncIterator[None]:
    """The connection pool's warnings (each failed reconnect, several lines of libpq's) are
    kept off the terminal: a command's failure is its one line on stderr, and a database
    that went away is named there by the step it stopped, or by the audit trail's entry."""
    pool_log = logging.getLogger("psycopg.pool")
    level = pool_log.level
    pool_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        pool_log.setLevel(level)


def offline_advice(message: str) -> str:
    """A failure's advice as it applies offline: the backup library names `ers backup init`,
    which asks the service that is not running."""
    return message.replace("`ers backup init`", "`ers backup --offline init`")


async def _refuse_postgresql_snapshots(settings: Any) -> None:
    """Without ERS_DATABASE_URL the state is taken for SQLite files: a data directory with
    none of them, over a repository of PostgreSQL snapshots, is a PostgreSQL service's whose
    URL was left out (each command would misname what is missing, and make SQLite files)."""
    if any((settings.data_dir / f"{name}.sqlite3").exists() for name in COMPONENTS):
        return
    from backup import BackupError
    from backup.errors import shown_repository
    from backup.pg import POSTGRES_TAG
    from backup.repository import restic_for

    try:
        found = await restic_for(_repository_config()).snapshots(tag=POSTGRES_TAG)
    except BackupError:
        return  # the command itself says what keeps the repository from being read
    if found:
        where = shown_repository(settings.restic_repository)
        raise CliError(
            f"the snapshots in {where} are a PostgreSQL service's (tag "
            f"{POSTGRES_TAG}) and ERS_DATABASE_URL is not set: set it to that service's "
            "database, as `ers serve` has it",
            USAGE,
        )


async def _offline_action(args: argparse.Namespace, manager: Any, progress: Activity) -> Any:
    action = args.action
    if action == "list":
        from backup import BackupError
        from service.backups.replies import human_size

        # The list was just read from the repository: --refresh has nothing more to do.
        snapshots = manager.list()
        last = max((s.time for s in snapshots), default=None)
        reply: dict[str, Any] = {
            "available": len(snapshots),
            "lastBackup": iso(last) if last else None,
        }
        # The list ends with the live state's size, as the service's does.
        try:
            reply["totalSize"] = human_size(sum((await manager.backend.live_sizes()).values()))
        except BackupError as exc:
            reply |= {"totalSize": None, "sizeError": str(exc)}
        # With the rollbacks the audit trail alone tells of (a kill before their records).
        with audit_trail(load_settings()) as trail:
            told = await asyncio.to_thread(trail.swaps)
        if trail.problem:  # the marks then stand on the repository's records alone
            note(f"the audit trail was not read ({trail.problem}): '(put aside)' may be missing")
        marks = [*manager.index.marks(), *unrecorded(told, manager.index.marks())]
        return reply | {"backups": listed(snapshots, marks)}
    if action == "create":
        components = None if args.type == "full_system" else [args.type]
        progress.stage("backing up")
        result = await manager.create(
            components, args.reason, on_progress=progress.restic_status, skip_unchanged=False
        )
        return created_reply(result, args.reason, args.type)
    if action == "show":
        return details_reply(await manager.details(args.backup_id))
    if action == "test-rollback":
        progress.stage("restoring into scratch and comparing")
        return preview_reply(await manager.test_rollback(args.backup_id, args.components or None))
    if action == "rollback":
        with audit_trail(load_settings()) as trail:
            return await _offline_rollback(args, manager, progress, trail)
    if action == "drill":
        progress.stage("restoring the newest snapshots into scratch and verifying")
        drill = await manager.verify_latest()
        return {
            "ok": drill.ok,
            "backupId": drill.snapshot_id,
            "durationSeconds": round(drill.duration_seconds, 3),
            "files": [
                {
                    "component": f.component,
                    # With PostgreSQL each component comes from a snapshot of its own.
                    "backupId": drill.snapshot_of.get(f.component, drill.snapshot_id),
                    "integrity": f.integrity,
                    "checksumMatches": f.checksum_matches,
                    "size": f.size,
                }
                for f in drill.files
            ],
        }
    if action == "check":
        progress.stage("restic check")
        result = await manager.check()
        return {"ok": result.ok, "output": result.output_tail}
    if action == "prune":
        progress.stage("forgetting and pruning")
        forgotten = await manager.forget(keep_last=load_settings().max_backups)
        await manager.prune()
        return {"kept": len(forgotten.kept), "removed": len(forgotten.removed)}
    raise ValueError(action)


# How a shell reports a command that SIGINT (Ctrl-C) stopped.
INTERRUPTED = 130


async def _offline_rollback(
    args: argparse.Namespace, manager: Any, progress: Activity, trail: OfflineTrail
) -> dict[str, Any]:
    from backup.events import RollbackStepStarted
    from service.incidents.audit import (
        ROLLBACK_STARTED,
        ROLLBACK_SWAPPED,
        rollback_run,
        swap_detail,
    )

    @contextlib.asynccontextmanager
    async def nothing_to_pause() -> AsyncIterator[None]:
        yield

    def on_event(event: Any) -> None:
        if isinstance(event, RollbackStepStarted):
            progress.stage(f"rollback: {event.step}")

    async def swapped(result: Any) -> None:
        entry = swap_detail(run["run"], result)
        await asyncio.to_thread(trail.record, ROLLBACK_SWAPPED, entry)

    manager.events.subscribe(on_event)
    run = rollback_run()
    detail = {"backupId": args.backup_id, "reason": args.reason, "run": run["run"]}
    trail.record(ROLLBACK_STARTED, detail | run | {"components": args.components})
    try:
        result = await manager.rollback(
            args.backup_id,
            args.components or None,
            args.reason,
            nothing_to_pause,
            lambda: None,
            on_progress=progress.restic_status,
            swapped=swapped,
        )
    except asyncio.CancelledError:
        # Ctrl-C before the swap (one that came after it is taken by the backend, and the
        # rollback is told as done).
        said = _interrupted(load_settings())
        trail.record("rollback", detail | {"error": said})
        raise CliError(said, INTERRUPTED) from None
    except Exception as exc:
        # As the service says it: refused (nothing touched) or failed at a step.
        from backup import RollbackFailed

        task = asyncio.current_task()
        if isinstance(exc, RollbackFailed) and task is not None and task.cancelling():
            # Ctrl-C while a statement that could not be cut short ran on (a lock wait, to
            # its timeout): failed before its swap, as interrupted, the data unchanged.
            said = _interrupted(load_settings())
            trail.record("rollback", detail | {"error": said})
            raise CliError(said, INTERRUPTED) from None
        said = str(exc) if isinstance(exc, RollbackFailed) else f"refused: {exc}"
        trail.record("rollback", detail | {"error": said})
        raise
    # Before the outcome: a kill meanwhile leaves the rollback cut off after its swap, and
    # the service's next start runs what follows it (this too).
    result = await _replies_forgotten(result)
    trail.record(
        "rollback",
        detail
        | {
            "backupId": result.snapshot_id,
            "components": list(result.components),
            "safetyBackupId": result.safety_snapshot_id,
            "error": None,
        },
    )
    reply = rollback_reply(result, args.reason)
    if said := trail.tell():
        reply["auditTrailError"] = said
    return reply


async def _replies_forgotten(result: Any) -> Any:
    """What follows the swap of each component, as the service runs it (``after_swaps``),
    done here: the schema brought up to date and the remembered replies that may tell of
    writes put aside forgotten, with what was done in the rollback's notes. (The cached
    answers and the isolations it also puts back live in a running service alone.)"""
    import dataclasses

    from service.backups.cut_off import after_swaps, after_the_swap
    from service.stores import Stores
    from service.stores.conversations import FORGOTTEN_AT_ROLLBACK_OF, not_forgotten

    wrote_to = [name for name in FORGOTTEN_AT_ROLLBACK_OF if name in result.components]
    if not wrote_to:
        return result

    async def nothing() -> list[str]:
        return []

    stores = Stores.from_settings(load_settings())
    try:
        await stores.open()
        notes = await after_the_swap(after_swaps(nothing, nothing, stores), wrote_to)
    except (Exception, asyncio.CancelledError) as exc:  # the rollback stands, told as done
        if isinstance(exc, asyncio.CancelledError) and (task := asyncio.current_task()):
            task.uncancel()  # Ctrl-C: the swap is done, and the rollback is told as done
            exc = RuntimeError("interrupted")
        stores_written = {store for name in wrote_to for store in FORGOTTEN_AT_ROLLBACK_OF[name]}
        notes = [not_forgotten(" or ".join(sorted(stores_written)), exc)]
    finally:
        await stores.close()
    return dataclasses.replace(result, notes=(*result.notes, *notes)) if notes else result


def _interrupted(settings: Any) -> str:
    if settings.database_url is not None:
        return "the rollback was interrupted before its swap: the live data was left unchanged"
    return (
        "the rollback was interrupted before it was done: the live data is as it was (a swap "
        "it had begun is put back by the next start of the service or of an offline command)"
    )
