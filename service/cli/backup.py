"""``ers backup``: backups of a running service over HTTP, or with ``--offline`` straight on
the repository and data directory, for the day the service cannot start."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from service.cli.backup_offline import (
    COMPONENTS,
    offline_advice,
    run_offline,
    tell_unknown_variables,
)
from service.cli.backup_tables import TABLES, undo_command
from service.cli.output import (
    FAILED,
    OK,
    REFUSED,
    USAGE,
    CliError,
    activity,
    emit,
)
from service.cli.remote import DEFAULT_URL, actions_of, call, command, segment
from telemetry.redaction import redacted_url

# What each action's table (and the undo command of a rollback) reads of the service's reply.
REPLY_KEYS = {
    "list": ("backups", "available"),
    "init": ("repositoryId", "created"),
    "create": ("reason", "durationSeconds"),
    "show": ("backupId", "time", "components", "files"),
    "test-rollback": ("backupId", "snapshotTime", "components"),
    "rollback": ("backupId", "safetyBackupId", "components", "durationSeconds"),
    "check": ("ok",),
    "prune": ("kept", "removed"),
}


def _request(args: argparse.Namespace) -> tuple[str, str, Any, str | None]:
    """An action's method, path and body, and the name of its long work (if it is)."""
    action = args.action
    if action == "list":
        if args.refresh:
            return "POST", "/api/emergency/backups/refresh", None, "re-reading"
        return "GET", "/api/emergency/backups", None, None
    if action == "init":
        return "POST", "/api/emergency/backups/init", None, "initialising"
    if action == "create":
        body = {"reason": args.reason, "type": args.type}
        return "POST", "/api/emergency/backups/create", body, "backing up"
    if action == "show":
        return "GET", f"/api/emergency/backups/{segment(args.backup_id)}", None, None
    # A snapshot named, or the one the service picks from before the incident.
    target = (
        {"beforeIncident": args.before_incident}
        if getattr(args, "before_incident", None)
        else {"backupId": getattr(args, "backup_id", None)}
    )
    if action == "test-rollback":
        body = {**target, "components": args.components or None}
        path = "/api/emergency/backups/test-rollback"
        return "POST", path, body, "restoring into scratch and comparing"
    if action == "rollback":
        body = {
            **target,
            "confirm": args.yes,
            "reason": args.reason,
            "components": args.components or None,
        }
        return "POST", "/api/emergency/rollback", body, "rolling back"
    if action in ("check", "prune"):
        return "POST", f"/api/emergency/backups/{action}", None, f"restic {action}"
    raise ValueError(action)


def _online(args: argparse.Namespace) -> dict[str, Any]:
    method, path, body, waiting = _request(args)
    return call(args, method, path, body, waiting=waiting, expect=REPLY_KEYS[args.action])


def _unchanged_since(result: dict[str, Any], args: argparse.Namespace) -> str | None:
    """The newest snapshot holding the skipped components: what 'nothing changed' is
    measured against."""
    try:
        listed = (
            _offline_list_sync(args)
            if args.offline
            else call(args, "GET", "/api/emergency/backups", expect=REPLY_KEYS["list"])
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
        return asyncio.run(run_offline(listing, progress))


class OnceEach(argparse.Action):
    """A list option whose values are kept once each, in order: a component named twice is
    rolled back once, and written once in the audit trail."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        setattr(namespace, self.dest, list(dict.fromkeys(values)))


def _check_target(args: argparse.Namespace) -> None:
    """A rollback names its snapshot or the incident to roll back to before, not both, and
    says why."""
    if args.backup_id and args.before_incident:
        raise CliError("give a snapshot id or --before-incident, not both", USAGE)
    if not args.backup_id and not args.before_incident:
        raise CliError(
            "name the snapshot to roll back to (`ers backup list` shows them), or give "
            "--before-incident INCIDENT_ID",
            USAGE,
        )
    if args.action == "rollback" and not args.reason.strip():
        raise CliError("--reason must say why: it is kept in the audit trail", USAGE)
    if args.before_incident and args.offline:
        raise CliError(
            "--before-incident asks the service, which knows when the incident began; "
            "offline, name the snapshot (`ers backup --offline list` shows when each was taken)",
            USAGE,
        )


def run(args: argparse.Namespace) -> int:
    from backup import (
        BackupError,
        InvalidBackupReason,
        InvalidSnapshotId,
        RollbackRefused,
        SnapshotNotFound,
        validate_reason,
    )
    from service.fleet.datadir_lock import DataDirInUse, DataDirUnusable

    if args.action in ("test-rollback", "rollback"):
        _check_target(args)
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
            "the service runs restore drills on its own schedule (the last one is its health's "
            "restore_drill check: GET /api/emergency/health); `ers backup --offline drill` runs "
            "one now, beside the service or without it",
            USAGE,
        )
    if args.offline:
        tell_unknown_variables()  # once, not again for the listing after a skipped create
        try:
            with activity(args.action) as progress:
                result = asyncio.run(run_offline(args, progress))
        except (SnapshotNotFound, RollbackRefused, InvalidSnapshotId) as exc:
            # What the service answers with a 404, 409 or 422: the same exit as online.
            raise CliError(offline_advice(str(exc)), REFUSED) from None
        except (BackupError, DataDirInUse) as exc:
            raise CliError(offline_advice(str(exc)), FAILED) from None
        except DataDirUnusable as exc:
            raise CliError(str(exc), USAGE) from None
    else:
        result = _online(args)
    if args.action == "create" and result.get("backupId") is None:
        result["unchangedSince"] = _unchanged_since(result, args)
    if args.action == "rollback":
        result["undoCommand"] = undo_command(result, offline=args.offline, where=_where(args))
    emit(args, result, TABLES[args.action])
    if args.action in ("check", "drill") and not result.get("ok"):
        what = "repository check" if args.action == "check" else "restore drill"
        print(f"ers: the {what} found problems: see its output", file=sys.stderr)
        return FAILED
    if args.action == "test-rollback" and (failing := _failing_copies(result)):
        # A script's `test-rollback ID && rollback ID` stops here.
        print(
            f"ers: the snapshot's copy of {', '.join(failing)} fails its check: a rollback to"
            " it would fail; see its output",
            file=sys.stderr,
        )
        return FAILED
    return OK


def _failing_copies(preview: dict[str, Any]) -> list[str]:
    return [
        name
        for name, component in preview["components"].items()
        if component["verification"]["integrity"] != "ok"
        or component["verification"]["checksumMatches"] is False
    ]


def _where(args: argparse.Namespace) -> list[str]:
    """The options an undo needs to reach the same service as the rollback did."""
    # A password or query value in --url is shown redacted: the operator puts it back.
    where = [] if args.url == DEFAULT_URL else ["--url", redacted_url(args.url)]
    if getattr(args, "token_file", None) is not None:
        where += ["--token-file", str(args.token_file.absolute())]  # from any directory
    return where


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
    actions = actions_of(parser)
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
        # A rollback may name the incident instead (--before-incident).
        subs[name].add_argument(
            "backup_id",
            nargs=None if name == "show" else "?",
            help="snapshot id: the 8-character short id or the full one",
        )
    for name in ("test-rollback", "rollback"):
        subs[name].add_argument(
            "--before-incident",
            metavar="INCIDENT_ID",
            help="instead of a snapshot id: the newest snapshot from before the incident first"
            " appeared that holds the components rolled back",
        )
        subs[name].add_argument(
            "--components",
            nargs="+",
            choices=COMPONENTS,
            action=OnceEach,
            help="only these components (default: every one in the snapshot)",
        )
    subs["rollback"].add_argument("--reason", required=True, help="why, kept in the audit trail")
    subs["rollback"].add_argument("--yes", action="store_true", help="confirm the rollback")
    for sub in subs.values():
        sub.add_argument(
            "--offline", action="store_true", default=argparse.SUPPRESS, help=OFFLINE_HELP
        )
        sub.set_defaults(handler=run)
