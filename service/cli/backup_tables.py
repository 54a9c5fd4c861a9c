"""How ``ers backup`` draws each reply for people (``-o json`` prints the reply as it is)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from rich.console import Console

from service.cli.output import joined, new_table, short_id, size, when

# Tables a component keeps for itself (write probes, the ids of requests and spans seen, SQLite's
# own): what a rollback does to them tells an operator nothing.
INTERNAL_TABLES = frozenset({"idempotency_keys", "sent_batches", "write_probe"})


def _internal(table: str) -> bool:
    return table.startswith(("_", "sqlite_")) or table in INTERNAL_TABLES


def _put_aside(components: list[str] | None, held: list[str]) -> str:
    if not components:
        return ""
    return " (put aside)" if set(components) == set(held) else f" ({joined(components)} put aside)"


def _list_table(out: Console, data: dict[str, Any]) -> None:
    table = new_table("ID", "TIME", "REASON", "COMPONENTS", "HOST")
    for s in data["backups"]:
        table.add_row(
            short_id(s["backupId"]),
            when(s["time"]),
            (s.get("reason") or "-") + _put_aside(s.get("putAside"), s["components"]),
            joined(s["components"]),
            s.get("hostname") or "-",
        )
    out.print(table)
    if data.get("error"):
        out.print(
            f"the list above is the last one read; the repository is not reached: {data['error']}"
        )
        return
    size_note = f", {data['totalSize']} live" if data.get("totalSize") else ""
    count = f"{data['available']} snapshot{'' if data['available'] == 1 else 's'}"
    out.print(f"{count}, last {when(data.get('lastBackup'))}{size_note}")


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
    # A backup a person asks for always takes a snapshot (the route passes
    # skip_unchanged=False), so backupId is always set here.
    summary = data.get("summary") or {}
    snapshots = data.get("snapshots") or []
    if len(snapshots) > 1:  # PostgreSQL: one snapshot per component
        each = ", ".join(f"{short_id(s['backupId'])} {joined(s['components'])}" for s in snapshots)
        out.print(
            f"{len(snapshots)} snapshots ({data['reason']}) in "
            f"{data['durationSeconds']:.1f} s: {each}"
        )
    else:
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


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _note(now: int | None, then: int | None) -> str:
    if now is None:
        return "the table comes back"
    if then is None:
        return "the table goes away"
    return ""


def _preview_table(out: Console, data: dict[str, Any]) -> None:
    out.print(
        f"rolling back to snapshot {short_id(data['backupId'])} "
        f"({when(data['snapshotTime'])}, {data.get('snapshotReason') or '-'}) would change:"
    )
    # ADDED: rows the rollback brings back; REMOVED: rows it drops; CHANGED: rows it puts
    # back as they were ("-": the table is on one side only, has no key, or is too large).
    table = new_table("COMPONENT", "TABLE", "ROWS NOW", "ROWS AFTER", "ADDED", "REMOVED", "CHANGED")
    problems = []
    for component, info in data["components"].items():
        verification = info["verification"]
        readable = verification["integrity"] == "ok"
        if not readable or verification["checksumMatches"] is False:
            checksum = {True: "matches", False: "differs", None: "not recorded"}
            problems.append(
                f"{component}: the snapshot's copy fails its check (integrity "
                f"{verification['integrity']}, checksum "
                f"{checksum[verification['checksumMatches']]}): a rollback to it fails its "
                "verify step and leaves the live data unchanged"
            )
        for name, rows in sorted(info["tables"].items()):
            if _internal(name):
                continue
            table.add_row(
                component,
                name,
                *(
                    _count(rows.get(key))
                    for key in ("rowsNow", "rowsInSnapshot", "added", "removed", "changed")
                ),
            )
            # A copy that cannot be read has no tables to count: none of them "goes away".
            note = _note(rows["rowsNow"], rows["rowsInSnapshot"]) if readable else ""
            if note:
                problems.append(f"{component}.{name}: {note}")
    out.print(table)
    for problem in problems:
        out.print(problem)
    out.print("nothing live was touched")


def _rollback_table(out: Console, data: dict[str, Any]) -> None:
    out.print(
        f"rolled back {joined(data['components'])} to snapshot {short_id(data['backupId'])} "
        f"in {data['durationSeconds']:.1f} s"
    )
    safety = short_id(data["safetyBackupId"])
    for name in data.get("keptAsFound") or []:
        out.print(
            f"{name} was damaged: snapshot {safety} keeps its bytes as found, which no rollback "
            f"puts back (restic dump {safety} /{name}.sqlite3)"
        )
    if data["undoCommand"] is not None:
        out.print(f"the state before is in snapshot {safety}; to undo this:")
        # One line however narrow the terminal, so that it can be copied and run as it is.
        out.print(f"  {data['undoCommand']}", soft_wrap=True, markup=False, highlight=False)
    for note in data.get("restored") or []:
        out.print(note)


def undo_command(data: dict[str, Any], *, offline: bool, where: Sequence[str] = ()) -> str | None:
    """The command that puts back what a rollback replaced, complete as printed: an offline
    rollback's undo is offline too, since the service it ran without is not there to ask;
    ``where``: the options naming the service and the token, as given to the rollback. A
    component damaged when replaced is left out (kept as found, it cannot be put back);
    None when that leaves none."""
    safety, target = short_id(data["safetyBackupId"]), short_id(data["backupId"])
    damaged = set(data.get("keptAsFound") or ())
    if not (components := [c for c in data["components"] if c not in damaged]):
        return None
    return (
        f"ers backup rollback {safety} --components {' '.join(components)} "
        f'--reason "undo the rollback to {target}" --yes'
        + (" --offline" if offline else "".join(f" {shlex.quote(o)}" for o in where))
    )


def _check_table(out: Console, data: dict[str, Any]) -> None:
    out.print("repository check: ok" if data["ok"] else "repository check FAILED")
    if not data["ok"] and data.get("output"):
        out.print(data["output"])


def _drill_table(out: Console, data: dict[str, Any]) -> None:
    table = new_table("COMPONENT", "SNAPSHOT", "INTEGRITY", "CHECKSUM", "SIZE")
    for f in data["files"]:
        checksum = {True: "matches", False: "DIFFERS", None: "-"}[f["checksumMatches"]]
        snapshot = short_id(f.get("backupId") or data["backupId"])
        table.add_row(f["component"], snapshot, f["integrity"], checksum, size(f["size"]))
    out.print(table)
    verdict = "passed" if data["ok"] else "FAILED"
    snapshots = {f.get("backupId") or data["backupId"] for f in data["files"]}
    drilled = (
        f"{len(snapshots)} snapshots, each component's newest"
        if len(snapshots) > 1
        else f"newest snapshot {short_id(data['backupId'])}"
    )
    out.print(f"restore drill {verdict}: {drilled}, {data['durationSeconds']:.1f} s")


def _prune_table(out: Console, data: dict[str, Any]) -> None:
    out.print(f"kept {data['kept']} snapshots, removed {data['removed']}")


def _init_table(out: Console, data: dict[str, Any]) -> None:
    # Shown short, as snapshot ids are (-o json has them in full).
    repository, previous = data["repositoryId"], data.get("previousRepositoryId")
    if previous == repository:
        out.print(f"repository {short_id(repository)} was already the one in use; nothing changed")
        return
    verb = "created" if data["created"] else "adopted the existing"
    out.print(f"{verb} repository {short_id(repository)}")
    if previous:
        out.print(f"(it replaces repository {short_id(previous)})")


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
