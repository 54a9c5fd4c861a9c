"""``ers backup``: backups of a running service over HTTP, or with ``--offline`` straight on
the repository and data directory, for the day the service cannot start."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from service.cli.remote import RemoteError, add_connection_options, call, print_json
from service.settings import load_settings

COMPONENTS = ("conversations", "budgets", "profiles", "system_state")


def _progress(progress: Any) -> None:
    done = int(progress.percent_done * 30)
    sys.stderr.write(f"\r[{'#' * done}{'.' * (30 - done)}] {progress.percent_done:5.1%}")
    sys.stderr.flush()


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

    outcome = await init_repository(_repository_config())
    return {
        "repositoryId": outcome.identity.expected_id,
        "created": outcome.created,
        "previousRepositoryId": outcome.previous_id,
    }


async def _offline_manager(owns_data_dir: bool):  # noqa: ANN202
    from backup import BackupConfig, BackupManager

    settings = load_settings()
    components = {name: settings.data_dir / f"{name}.sqlite3" for name in COMPONENTS}
    components["incidents"] = settings.data_dir / "incidents.sqlite3"
    config = BackupConfig(
        components={k: v for k, v in components.items() if Path(v).exists()},
        work_dir=settings.data_dir.parent / "backup-work",
    )
    # A running service owns the working files: clearing them as an interrupted run's
    # leftovers would pull them from under a rollback or backup it is running.
    return await BackupManager.open(_repository_config(), config, owns_state=owns_data_dir)


# Offline actions that write the data directory, the service's working files or the
# repository's retention: refused while a service holds the state (service.datadir_lock).
OFFLINE_CHANGES = frozenset({"init", "create", "rollback", "prune"})


async def _offline(args: argparse.Namespace) -> Any:
    from service.datadir_lock import offline_access

    mutating = args.action in OFFLINE_CHANGES
    async with offline_access(load_settings(), mutating=mutating) as owns_data_dir:
        if args.action == "init":
            return await _offline_init()
        return await _offline_action(args, await _offline_manager(owns_data_dir))


async def _offline_action(args: argparse.Namespace, manager: Any) -> Any:
    action = args.action
    if action == "list":
        # The list was just read from the repository: --refresh has nothing more to do.
        return [
            {
                "backupId": s.id,
                "time": s.time.isoformat(),
                "components": list(s.components),
                "reason": s.reason,
            }
            for s in manager.list()
        ]
    if action == "create":
        components = None if args.type == "full_system" else [args.type]
        result = await manager.create(
            components, args.reason, on_progress=_progress, skip_unchanged=False
        )
        return {
            "backupId": result.snapshot_id,
            "components": list(result.components),
            "skipped": list(result.skipped),
        }
    if action == "show":
        details = await manager.details(args.backup_id)
        return {
            "backupId": details.snapshot.id,
            "files": [{"path": f.path, "size": f.size} for f in details.files],
        }
    if action == "test-rollback":
        preview = await manager.test_rollback(args.backup_id, args.components or None)
        return {
            c.component: {
                t.table: {"rowsNow": t.rows_now, "rowsInSnapshot": t.rows_in_snapshot}
                for t in c.tables
            }
            for c in preview.components
        }
    if action == "rollback":

        @contextlib.asynccontextmanager
        async def nothing_to_pause() -> AsyncIterator[None]:
            yield

        result = await manager.rollback(
            args.backup_id,
            args.components or list(COMPONENTS),
            args.reason,
            nothing_to_pause,
            lambda: None,
            on_progress=_progress,
        )
        return {
            "backupId": result.snapshot_id,
            "safetyBackupId": result.safety_snapshot_id,
            "stepSeconds": result.step_seconds,
        }
    if action == "check":
        result = await manager.check()
        return {"ok": result.ok, "output": result.output_tail}
    if action == "prune":
        forgotten = await manager.forget(keep_last=load_settings().max_backups)
        await manager.prune()
        return {"kept": len(forgotten.kept), "removed": len(forgotten.removed)}
    raise ValueError(action)


def _online(args: argparse.Namespace) -> Any:
    action = args.action
    if action == "list":
        if args.refresh:
            return call(args, "POST", "/api/emergency/backups/refresh")
        return call(args, "GET", "/api/emergency/backups")
    if action == "init":
        return call(args, "POST", "/api/emergency/backups/init")
    if action == "create":
        body = {"reason": args.reason, "type": args.type}
        return call(args, "POST", "/api/emergency/backups/create", body)
    if action == "show":
        return call(args, "GET", f"/api/emergency/backups/{args.backup_id}")
    if action == "test-rollback":
        body = {"backupId": args.backup_id, "components": args.components or None}
        return call(args, "POST", "/api/emergency/backups/test-rollback", body)
    if action == "rollback":
        body = {
            "backupId": args.backup_id,
            "confirm": args.yes,
            "reason": args.reason,
            "components": args.components or None,
        }
        return call(args, "POST", "/api/emergency/rollback", body)
    if action in ("check", "prune"):
        return call(args, "POST", f"/api/emergency/backups/{action}")
    raise ValueError(action)


def run(args: argparse.Namespace) -> int:
    from backup import BackupError, InvalidBackupReason, validate_reason
    from service.datadir_lock import DataDirInUse

    if args.action == "rollback" and not args.yes:
        print("ers: a rollback replaces live state; add --yes to confirm", file=sys.stderr)
        return 2
    if args.action == "create":
        try:
            validate_reason(args.reason)
        except InvalidBackupReason as exc:
            print(f"ers: {exc}", file=sys.stderr)
            return 2
    try:
        result = asyncio.run(_offline(args)) if args.offline else _online(args)
    except (RemoteError, BackupError, DataDirInUse) as exc:
        print(f"ers: {exc}", file=sys.stderr)
        return 1
    if args.offline:
        sys.stderr.write("\n" if args.action in ("create", "rollback") else "")
    if args.json or not isinstance(result, dict | list):
        print_json(result)
    else:
        print(json.dumps(result, indent=2, default=str))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("backup", help="backups, test rollbacks and rollbacks")
    actions = parser.add_subparsers(dest="action", required=True)
    subs = {
        "list": actions.add_parser("list", help="snapshots, newest first"),
        "init": actions.add_parser(
            "init", help="create the repository if there is none and make it the one backed up to"
        ),
        "create": actions.add_parser("create", help="take a backup now"),
        "show": actions.add_parser("show", help="one snapshot's files and sizes"),
        "test-rollback": actions.add_parser("test-rollback", help="dry run: what would change"),
        "rollback": actions.add_parser("rollback", help="roll back to a snapshot"),
        "check": actions.add_parser("check", help="restic check of the repository"),
        "prune": actions.add_parser("prune", help="apply retention and prune"),
    }
    subs["create"].add_argument(
        "--type", default="full_system", choices=["full_system", *COMPONENTS, "incidents"]
    )
    subs["create"].add_argument(
        "--reason",
        default="manual",
        help="the snapshot's reason tag: up to 64 of a-z 0-9 . _ - (e.g. before-upgrade)",
    )
    subs["list"].add_argument(
        "--refresh",
        action="store_true",
        help="make the service re-read the list from the repository first (an --offline "
        "list is always read from the repository)",
    )
    for name in ("show", "test-rollback", "rollback"):
        subs[name].add_argument("backup_id")
    for name in ("test-rollback", "rollback"):
        subs[name].add_argument("--components", nargs="*", choices=COMPONENTS)
    subs["rollback"].add_argument("--reason", required=True)
    subs["rollback"].add_argument("--yes", action="store_true", help="confirm the rollback")
    for sub in subs.values():
        add_connection_options(sub)
        sub.add_argument(
            "--offline",
            action="store_true",
            help="work on the repository and data directory directly",
        )
        sub.set_defaults(handler=run)
