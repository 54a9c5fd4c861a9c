"""``ers backup``: backups of a running service over HTTP, or with ``--offline`` straight on
the repository and data directory, for the day the service cannot start."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from service.cli.output import (
    FAILED,
    OK,
    USAGE,
    Activity,
    CliError,
    activity,
    emit,
    joined,
    new_table,
    short_id,
    size,
    when,
)
from service.cli.remote import call, command
from service.settings import load_settings

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


async def _offline(args: argparse.Namespace, progress: Activity) -> Any:
    from service.datadir_lock import offline_access

    mutating = args.action in OFFLINE_CHANGES
    async with offline_access(load_settings(), mutating=mutating) as owns_data_dir:
        if args.action == "init":
            return await _offline_init()
        manager = await _offline_manager(owns_data_dir)
        return await _offline_action(args, manager, progress)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _snapshot(s: Any) -> dict[str, Any]:
    """One snapshot, as the service's routes list it."""
    return {
        "backupId": s.id,
        "shortId": s.short_id,
        "time": _iso(s.time),
        "components": list(s.components),
        "reason": s.reason,
        "hostname": s.hostname,
    }


def _created(result: Any, args: argparse.Namespace) -> dict[str, Any]:
    summary = result.summary
    return {
        "backupId": result.snapshot_id,
        "reason": args.reason,
        "type": args.type,
        "components": list(result.components),
        "skipped": list(result.skipped),
        "durationSeconds": round(result.duration_seconds, 3),
        "summary": None
        if summary is None
        else {
            "filesNew": summary.files_new,
            "filesChanged": summary.files_changed,
            "dataAdded": summary.data_added,
            "totalBytesProcessed": summary.total_bytes_processed,
        },
    }


def _preview(preview: Any) -> dict[str, Any]:
    return {
        "backupId": preview.snapshot_id,
        "snapshotTime": _iso(preview.snapshot_time),
        "snapshotReason": preview.snapshot_reason,
        "liveStateTouched": False,
        "components": {
            c.component: {
                "verification": {
                    "integrity": c.verification.integrity,
                    "checksumMatches": c.verification.checksum_matches,
                },
                "tables": {
                    t.table: {"rowsNow": t.rows_now, "rowsInSnapshot": t.rows_in_snapshot}
                    for t in c.tables
                },
            }
            for c in preview.components
        },
    }


async def _offline_action(args: argparse.Namespace, manager: Any, progress: Activity) -> Any:
    """Each action answers in the shape of the service's route for it, so `-o json` and the
    tables are the same online and offline."""
    action = args.action
    if action == "list":
        # The list was just read from the repository: --refresh has nothing more to do.
        snapshots = manager.list()
        last = max((s.time for s in snapshots), default=None)
        return {
            "available": len(snapshots),
            "lastBackup": _iso(last) if last else None,
            "backups": [_snapshot(s) for s in snapshots],
        }
    if action == "create":
        components = None if args.type == "full_system" else [args.type]
        progress.stage("backing up")
        result = await manager.create(
            components, args.reason, on_progress=progress.restic_status, skip_unchanged=False
        )
        return _created(result, args)
    if action == "show":
        details = await manager.details(args.backup_id)
        return {
            **_snapshot(details.snapshot),
            "files": [{"path": f.path, "size": f.size} for f in details.files],
            "totalSize": details.total_size,
            "dataAdded": details.data_added,
        }
    if action == "test-rollback":
        progress.stage("restoring into scratch and comparing")
        return _preview(await manager.test_rollback(args.backup_id, args.components or None))
    if action == "rollback":
        from backup.events import RollbackStepStarted

        @contextlib.asynccontextmanager
        async def nothing_to_pause() -> AsyncIterator[None]:
            yield

        def on_event(event: Any) -> None:
            if isinstance(event, RollbackStepStarted):
                progress.stage(f"rollback: {event.step}")

        manager.events.subscribe(on_event)
        result = await manager.rollback(
            args.backup_id,
            args.components or list(COMPONENTS),
            args.reason,
            nothing_to_pause,
            lambda: None,
            on_progress=progress.restic_status,
        )
        return {
            "rolledBack": True,
            "backupId": result.snapshot_id,
            "components": list(result.components),
            "safetyBackupId": result.safety_snapshot_id,
            "stepSeconds": {k: round(v, 3) for k, v in result.step_seconds.items()},
            "durationSeconds": round(result.duration_seconds, 3),
            "reason": args.reason,
            "restored": list(result.notes),
        }
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


def _online(args: argparse.Namespace) -> Any:
    action = args.action
    if action == "list":
        if args.refresh:
            return call(args, "POST", "/api/emergency/backups/refresh", waiting="re-reading")
        return call(args, "GET", "/api/emergency/backups")
    if action == "init":
        return call(args, "POST", "/api/emergency/backups/init", waiting="initialising")
    if action == "create":
        body = {"reason": args.reason, "type": args.type}
        return call(args, "POST", "/api/emergency/backups/create", body, waiting="backing up")
    if action == "show":
        return call(args, "GET", f"/api/emergency/backups/{args.backup_id}")
    if action == "test-rollback":
        body = {"backupId": args.backup_id, "components": args.components or None}
        return call(
            args,
            "POST",
            "/api/emergency/backups/test-rollback",
            body,
            waiting="restoring into scratch and comparing",
        )
    if action == "rollback":
        body = {
            "backupId": args.backup_id,
            "confirm": args.yes,
            "reason": args.reason,
            "components": args.components or None,
        }
        return call(args, "POST", "/api/emergency/rollback", body, waiting="rolling back")
    if action in ("check", "prune"):
        return call(args, "POST", f"/api/emergency/backups/{action}", waiting=f"restic {action}")
    raise ValueError(action)


# Tables a component keeps for itself (write probes, request dedup, SQLite's own): what a
# rollback does to them tells an operator nothing.
INTERNAL_TABLES = frozenset({"idempotency_keys"})


def _internal(table: str) -> bool:
    return table.startswith(("_", "sqlite_")) or table in INTERNAL_TABLES


def _list_table(out: Console, data: dict[str, Any]) -> None:
    table = new_table("ID", "TIME", "REASON", "COMPONENTS", "HOST")
    for s in data["backups"]:
        table.add_row(
            short_id(s["backupId"]),
            when(s["time"]),
            s.get("reason") or "-",
            joined(s["components"]),
            s.get("hostname") or "-",
        )
    out.print(table)
    size_note = f", {data['totalSize']} live" if data.get("totalSize") else ""
    out.print(f"{data['available']} snapshots, last {when(data.get('lastBackup'))}{size_note}")


def _show_table(out: Console, data: dict[str, Any]) -> None:
    out.print(
        f"snapshot {short_id(data['backupId'])}  {when(data['time'])}  "
        f"reason {data.get('reason') or '-'}  components {joined(data['components'])}"
    )
    table = new_table("PATH", "SIZE")
    for f in data["files"]:
        table.add_row(f["path"], size(f["size"]))
    out.print(table)
    added = "" if data.get("dataAdded") is None else f", {size(data['dataAdded'])} added"
    out.print(f"{len(data['files'])} files, {size(data.get('totalSize'))}{added}")


def _created_table(out: Console, data: dict[str, Any]) -> None:
    if data["backupId"] is None:
        since = data.get("unchangedSince")
        out.print(
            "no component changed since "
            + (f"snapshot {short_id(since)}" if since else "the last snapshot")
            + f": nothing backed up ({joined(data['skipped'])})"
        )
        return
    summary = data.get("summary") or {}
    out.print(
        f"snapshot {short_id(data['backupId'])} ({data['reason']}): "
        f"{joined(data['components'])} in {data['durationSeconds']:.1f} s"
    )
    if summary:
        out.print(
            f"{summary['filesNew']} new and {summary['filesChanged']} changed files, "
            f"{size(summary['dataAdded'])} added to the repository"
        )
    if data.get("skipped"):
        out.print(f"unchanged, not backed up again: {joined(data['skipped'])}")


def _change(now: int | None, then: int | None) -> str:
    if now is None:
        return "table comes back"
    if then is None:
        return "table goes away"
    diff = then - now
    return "unchanged" if diff == 0 else f"{diff:+d} rows"


def _preview_table(out: Console, data: dict[str, Any]) -> None:
    out.print(
        f"rolling back to snapshot {short_id(data['backupId'])} "
        f"({when(data['snapshotTime'])}, {data.get('snapshotReason') or '-'}) would change:"
    )
    table = new_table("COMPONENT", "TABLE", "ROWS NOW", "ROWS AFTER", "CHANGE")
    problems = []
    for component, info in data["components"].items():
        verification = info["verification"]
        if verification["integrity"] != "ok" or verification["checksumMatches"] is False:
            problems.append(
                f"{component}: the snapshot's copy fails its check (integrity "
                f"{verification['integrity']}, checksum {verification['checksumMatches']})"
            )
        for name, rows in sorted(info["tables"].items()):
            if _internal(name):
                continue
            now, then = rows["rowsNow"], rows["rowsInSnapshot"]
            table.add_row(
                component,
                name,
                "-" if now is None else str(now),
                "-" if then is None else str(then),
                _change(now, then),
            )
    out.print(table)
    for problem in problems:
        out.print(problem)
    out.print("nothing live was touched")


def _rollback_table(out: Console, data: dict[str, Any]) -> None:
    out.print(
        f"rolled back {joined(data['components'])} to snapshot {short_id(data['backupId'])} "
        f"in {data['durationSeconds']:.1f} s"
    )
    out.print(
        f"the state before is in snapshot {short_id(data['safetyBackupId'])}: "
        f"`ers backup rollback {short_id(data['safetyBackupId'])}` undoes this"
    )
    for note in data.get("restored") or []:
        out.print(note)


def _check_table(out: Console, data: dict[str, Any]) -> None:
    out.print("repository check: ok" if data["ok"] else "repository check FAILED")
    if not data["ok"] and data.get("output"):
        out.print(data["output"])


def _drill_table(out: Console, data: dict[str, Any]) -> None:
    table = new_table("COMPONENT", "INTEGRITY", "CHECKSUM", "SIZE")
    for f in data["files"]:
        checksum = {True: "matches", False: "DIFFERS", None: "-"}[f["checksumMatches"]]
        table.add_row(f["component"], f["integrity"], checksum, size(f["size"]))
    out.print(table)
    verdict = "passed" if data["ok"] else "FAILED"
    out.print(
        f"restore drill {verdict}: newest snapshot {short_id(data['backupId'])}, "
        f"{data['durationSeconds']:.1f} s"
    )


def _prune_table(out: Console, data: dict[str, Any]) -> None:
    out.print(f"kept {data['kept']} snapshots, removed {data['removed']}")


def _init_table(out: Console, data: dict[str, Any]) -> None:
    verb = "created" if data["created"] else "adopted the existing"
    out.print(f"{verb} repository {data['repositoryId']}")
    if data.get("previousRepositoryId"):
        out.print(f"(it replaces repository {data['previousRepositoryId']})")


TABLES = {
    "list": _list_table,
    "show": _show_table,
    "create": _created_table,
    "test-rollback": _preview_table,
    "rollback": _rollback_table,
    "check": _check_table,
    "prune": _prune_table,
    "drill": _drill_table,
    "init": _init_table,
}


def _unchanged_since(result: dict[str, Any], args: argparse.Namespace) -> str | None:
    """The newest snapshot holding the skipped components: what 'nothing changed' is
    measured against."""
    try:
        listed = (
            _offline_list_sync(args)
            if args.offline
            else call(args, "GET", "/api/emergency/backups")
        )
    except CliError:
        return None
    skipped = set(result.get("skipped") or [])
    for snapshot in listed.get("backups", []):
        if skipped <= set(snapshot["components"]):
            return str(snapshot["backupId"])
    return None


def _offline_list_sync(args: argparse.Namespace) -> dict[str, Any]:
    listing = argparse.Namespace(**{**vars(args), "action": "list"})
    with activity("listing") as progress:
        return asyncio.run(_offline(listing, progress))


def run(args: argparse.Namespace) -> int:
    from backup import BackupError, InvalidBackupReason, validate_reason
    from service.datadir_lock import DataDirInUse

    if args.action == "rollback" and not args.yes:
        raise CliError(
            "a rollback replaces live state; run `ers backup test-rollback ID` to see what "
            "would change, then add --yes to confirm",
            USAGE,
        )
    if args.action == "create":
        try:
            validate_reason(args.reason)
        except InvalidBackupReason as exc:
            raise CliError(str(exc), USAGE) from None
    if args.action == "drill" and not args.offline:
        raise CliError(
            "the service runs restore drills on its own schedule (its status shows the last "
            "one); `ers backup --offline drill` runs one now, beside the service or without it",
            USAGE,
        )
    if args.offline:
        try:
            with activity(args.action) as progress:
                result = asyncio.run(_offline(args, progress))
        except (BackupError, DataDirInUse) as exc:
            raise CliError(str(exc), FAILED) from None
    else:
        result = _online(args)
    if args.action == "create" and result.get("backupId") is None:
        result["unchangedSince"] = _unchanged_since(result, args)
    emit(args, result, TABLES[args.action])
    if args.action in ("check", "drill") and not result.get("ok"):
        return FAILED
    return OK


OFFLINE_HELP = (
    "work on the repository and data directory directly, without the service "
    "(before or after the subcommand)"
)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "backup",
        help="backups, test rollbacks and rollbacks",
        description="backups, test rollbacks and rollbacks, through the service or, with "
        "--offline, straight on the repository (reads the same ERS_* settings as `ers serve`)",
    )
    parser.add_argument("--offline", action="store_true", help=OFFLINE_HELP)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    subs = {
        "list": command(actions, "list", "snapshots, newest first"),
        "init": command(
            actions,
            "init",
            "create the repository if there is none and make it the one backed up to",
        ),
        "create": command(actions, "create", "take a backup now"),
        "show": command(actions, "show", "one snapshot's files and sizes"),
        "test-rollback": command(
            actions, "test-rollback", "dry run: the rows each table would have after a rollback"
        ),
        "rollback": command(actions, "rollback", "roll back to a snapshot"),
        "check": command(actions, "check", "restic check of the repository"),
        "prune": command(actions, "prune", "apply retention and prune"),
        "drill": command(
            actions,
            "drill",
            "--offline only: restore the newest snapshots into scratch and verify every file",
        ),
    }
    subs["create"].add_argument(
        "--type",
        default="full_system",
        choices=["full_system", *COMPONENTS, "incidents"],
        help="one component, or all of them (full_system, the default)",
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
        subs[name].add_argument(
            "backup_id", help="snapshot id: the 8-character short id or the full one"
        )
    for name in ("test-rollback", "rollback"):
        subs[name].add_argument(
            "--components",
            nargs="+",
            choices=COMPONENTS,
            help="only these components (default: every one in the snapshot)",
        )
    subs["rollback"].add_argument("--reason", required=True, help="why, kept in the audit trail")
    subs["rollback"].add_argument("--yes", action="store_true", help="confirm the rollback")
    for sub in subs.values():
        sub.add_argument(
            "--offline", action="store_true", default=argparse.SUPPRESS, help=OFFLINE_HELP
        )
        sub.set_defaults(handler=run)
