"""``ers backup`` against a running service and, with --offline, against the repository."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from backup.index import tags_for
from service.settings import COMPONENTS
from tests.conftest import start_ers
from tests.processes import free_port, slow_restic


def ers(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("ERS_")}, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


def a_data_dir(data: Path) -> Path:
    """A data directory as ERS leaves it, a file for each component: budgets with one row,
    the others empty. Returns the budgets file."""
    data.mkdir()
    for name in (*COMPONENTS, "incidents"):
        sqlite3.connect(data / f"{name}.sqlite3").close()
    budgets = data / "budgets.sqlite3"
    with contextlib.closing(sqlite3.connect(budgets)) as db, db:
        db.execute("CREATE TABLE budgets (category TEXT PRIMARY KEY, limit_cents INTEGER)")
        db.execute("INSERT INTO budgets VALUES ('food', 10000)")
    return budgets


def offline_site(tmp_path: Path) -> tuple[dict[str, str], Path, str]:
    """A data directory, its repository and a full snapshot of it: (env, budgets, snapshot)."""
    env = {
        "ERS_DATA_DIR": str(tmp_path / "data"),
        "ERS_RESTIC_REPOSITORY": str(tmp_path / "repo"),
        "ERS_RESTIC_PASSWORD_FILE": str(tmp_path / "restic-password"),
    }
    budgets = a_data_dir(tmp_path / "data")
    assert ers(["backup", "init", "--offline"], env, tmp_path).returncode == 0
    created = ers(["backup", "create", "--offline", "--json"], env, tmp_path)
    assert created.returncode == 0, created.stderr
    return env, budgets, json.loads(created.stdout)["backupId"]


def test_a_backup_asked_for_just_after_a_start_waits_for_the_repository(tmp_path: Path) -> None:
    """The repository is opened (on a first start, created) in the background once the
    service answers; `ers backup create` sent in that moment exited 5, saying "connecting to
    the backup repository". Here its creation takes three seconds."""
    slow = slow_restic(tmp_path, command="init", seconds=3)
    service = start_ers(
        tmp_path,
        env={
            "ERS_BACKUPS_ENABLED": "true",
            "ERS_BACKUP_SCHEDULE_ENABLED": "false",
            "ERS_RESTIC_BINARY": str(slow),
        },
    )
    try:
        created = ers(["backup", "create", "--url", service.url, "--json"], {}, tmp_path)
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout)["backupId"]
    finally:
        assert service.stop() == 0


def test_backup_cli_online_then_offline(tmp_path: Path) -> None:
    env = {
        "ERS_DATA_DIR": str(tmp_path / "data"),
        "ERS_RESTIC_REPOSITORY": str(tmp_path / "repo"),
        "ERS_RESTIC_PASSWORD_FILE": str(tmp_path / "restic-password"),
    }
    service = start_ers(
        tmp_path, env={"ERS_BACKUPS_ENABLED": "true", "ERS_BACKUP_SCHEDULE_ENABLED": "false"}
    )
    try:
        with httpx.Client(base_url=service.url, timeout=30) as http:
            http.post("/chat", json={"message": "set my food budget to $100", "userId": "a"})
        service.wait_for_backups()
        created = ers(["backup", "create", "--url", service.url, "--json"], env, tmp_path)
        assert created.returncode == 0, created.stderr
        backup_id = json.loads(created.stdout)["backupId"]
        listed = json.loads(
            ers(["backup", "list", "--url", service.url, "--json"], env, tmp_path).stdout
        )
        assert listed["available"] == 1
        refused = ers(
            ["backup", "rollback", backup_id, "--reason", "x", "--url", service.url], env, tmp_path
        )
        assert refused.returncode == 2 and "--yes" in refused.stderr
        # The undo it prints reaches the same service when run as printed (it went to the
        # default URL when the rollback was given --url).
        rolled = ers(
            ["backup", "rollback", backup_id, "--reason", "x", "--yes", "--url", service.url]
            + ["--json"],
            env,
            tmp_path,
        )
        assert rolled.returncode == 0, rolled.stderr
        undo = shlex.split(json.loads(rolled.stdout)["undoCommand"])
        assert undo[-2:] == ["--url", service.url], undo
        undone = ers(undo[1:], env, tmp_path)
        assert undone.returncode == 0, undone.stderr
        httpx.post(f"{service.url}/chat", json={"message": "budget report"}, timeout=30)
    finally:
        assert service.stop() == 0
    # The shutdown took a final backup of what changed since.
    offline = ers(["backup", "list", "--offline", "--json"], env, tmp_path)
    assert offline.returncode == 0, offline.stderr
    snapshots = json.loads(offline.stdout)["backups"]
    assert {s["reason"] for s in snapshots} == {"manual", "pre-rollback", "shutdown"}
    # An audit trail that cannot be read is said beside the list, which stands without it.
    trail = tmp_path / "data" / "incidents.sqlite3"
    trail.rename(tmp_path / "incidents.aside")
    trail.mkdir()
    try:
        unread = ers(["backup", "list", "--offline", "--json"], env, tmp_path)
    finally:
        trail.rmdir()
        (tmp_path / "incidents.aside").rename(trail)
    assert unread.returncode == 0, unread.stderr
    assert json.loads(unread.stdout)["backups"] == snapshots
    assert "the audit trail was not read" in unread.stderr, unread.stderr

    # With the service down: change data, then roll back offline.
    db = sqlite3.connect(tmp_path / "data" / "budgets.sqlite3")
    with db:
        db.execute("DELETE FROM budgets")
    db.close()
    rolled = ers(
        [
            "backup",
            "rollback",
            backup_id,
            "--components",
            "budgets",
            "--reason",
            "restore lost budgets",
            "--offline",
            "--yes",
            "--json",
        ],
        env,
        tmp_path,
    )
    assert rolled.returncode == 0, rolled.stderr
    assert json.loads(rolled.stdout)["safetyBackupId"]
    rows = (
        sqlite3.connect(tmp_path / "data" / "budgets.sqlite3")
        .execute("SELECT category, limit_cents FROM budgets")
        .fetchall()
    )
    assert rows == [("food", 10000)]
    check = ers(["backup", "check", "--offline", "--json"], env, tmp_path)
    assert check.returncode == 0 and json.loads(check.stdout)["ok"] is True

    # Refused offline for the reasons the service refuses with a 4xx: the same exit, 4.
    rollback = ["backup", "rollback", "--reason", "r", "--offline", "--yes"]
    unknown = ers([*rollback, "0badc0de"], env, tmp_path)
    assert unknown.returncode == 4, unknown.stderr
    assert "0badc0de" in unknown.stderr
    budgets_only = json.loads(rolled.stdout)["safetyBackupId"]
    not_held = ers([*rollback, budgets_only, "--components", "profiles"], env, tmp_path)
    assert not_held.returncode == 4, not_held.stderr
    assert "does not contain profiles" in not_held.stderr
    not_an_id = ers([*rollback, "latest"], env, tmp_path)
    assert not_an_id.returncode == 4, not_an_id.stderr
    assert "latest" in not_an_id.stderr

    # A check that finds problems: its report on stdout, one line on stderr, exit 1.
    next((tmp_path / "repo" / "data").glob("*/*")).unlink()
    damaged = ers(["backup", "check", "--offline"], env, tmp_path)
    assert damaged.returncode == 1, damaged.stderr
    assert damaged.stdout.startswith("repository check FAILED"), damaged.stdout
    assert damaged.stderr == "ers: the repository check found problems: see its output\n"


def test_offline_init_create_with_reason_and_a_repository_moved_away(tmp_path: Path) -> None:
    env = {
        "ERS_DATA_DIR": str(tmp_path / "data"),
        "ERS_RESTIC_REPOSITORY": str(tmp_path / "repo"),
        "ERS_RESTIC_PASSWORD_FILE": str(tmp_path / "restic-password"),
    }
    a_data_dir(tmp_path / "data")

    refused = ers(["backup", "list", "--offline"], env, tmp_path)
    assert refused.returncode == 1 and "ers backup --offline init" in refused.stderr
    assert not (tmp_path / "repo").exists()
    initialised = ers(["backup", "init", "--offline", "--json"], env, tmp_path)
    assert initialised.returncode == 0, initialised.stderr
    first_id = json.loads(initialised.stdout)["repositoryId"]

    bad = ers(["backup", "create", "--offline", "--reason", "before upgrade"], env, tmp_path)
    assert bad.returncode == 2 and "no spaces" in bad.stderr
    created = ers(
        ["backup", "create", "--offline", "--reason", "before-upgrade", "--json"], env, tmp_path
    )
    assert created.returncode == 0, created.stderr
    restic_env = {
        **os.environ,
        "RESTIC_REPOSITORY": str(tmp_path / "repo"),
        "RESTIC_PASSWORD_FILE": str(tmp_path / "restic-password"),
    }
    listed = subprocess.run(
        ["restic", "snapshots", "--json"],
        env=restic_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    [snapshot] = json.loads(listed.stdout)
    assert "reason:before-upgrade" in snapshot["tags"]

    (tmp_path / "repo").rename(tmp_path / "moved-away")
    gone = ers(["backup", "list", "--offline", "--json"], env, tmp_path)
    assert gone.returncode == 1 and "gone" in gone.stderr and gone.stdout == ""
    assert not (tmp_path / "repo").exists()

    fresh = ers(["backup", "init", "--offline", "--json"], env, tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(fresh.stdout)["created"] is True
    assert json.loads(fresh.stdout)["previousRepositoryId"] == first_id
    empty = ers(["backup", "list", "--offline", "--json"], env, tmp_path)
    assert empty.returncode == 0 and json.loads(empty.stdout)["backups"] == []


def test_an_offline_command_on_a_data_directory_that_does_not_exist_changes_nothing(
    tmp_path: Path,
) -> None:
    """A mistyped ERS_DATA_DIR was created, with a lock and a repository record in it, and
    its empty state listed as the service's."""
    typo = tmp_path / "dta"
    env = {
        "ERS_DATA_DIR": str(typo),
        "ERS_RESTIC_REPOSITORY": str(tmp_path / "repo"),
        "ERS_RESTIC_PASSWORD_FILE": str(tmp_path / "restic-password"),
    }
    for action in (["list"], ["check"], ["create", "--reason", "manual"]):
        refused = ers(["backup", "--offline", *action], env, tmp_path)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith(f"ers: the data directory {typo} does not exist")
        assert not typo.exists()


def test_an_offline_rollback_is_refused_when_rollbacks_are_disabled(tmp_path: Path) -> None:
    """emergency_rollback_enabled=false forbids rollbacks at all: the service refuses them with
    a 409, and an offline rollback, which reads the same settings, is refused too (exit 4)
    before anything is restored, snapshotted or swapped."""
    env, budgets, backup_id = offline_site(tmp_path)
    db = sqlite3.connect(budgets)
    with db:
        db.execute("UPDATE budgets SET limit_cents = 20000")
    db.close()

    disabled = {**env, "ERS_EMERGENCY_ROLLBACK_ENABLED": "false"}
    rollback = ["backup", "rollback", backup_id, "--reason", "r", "--offline", "--yes"]
    refused = ers(rollback, disabled, tmp_path)
    assert refused.returncode == 4, refused.stderr
    assert "emergency_rollback_enabled=false" in refused.stderr
    rows = sqlite3.connect(budgets).execute("SELECT limit_cents FROM budgets").fetchall()
    assert rows == [(20000,)]
    listed = json.loads(ers(["backup", "list", "--offline", "--json"], env, tmp_path).stdout)
    assert [b["reason"] for b in listed["backups"]] == ["manual"]  # no safety snapshot
    allowed = ers(rollback, env, tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    # The replaced files are deleted before the command ends, not left until the next start.
    assert not list(budgets.parent.glob("*.ers-old-*"))


def test_a_corrupt_file_is_rolled_back_offline_its_bytes_kept_in_the_safety_snapshot(
    tmp_path: Path,
) -> None:
    """Before: the safety snapshot refused the file SQLite could not open ("could not copy
    ... file is not a database"), and the test rollback printed a traceback: a component
    whose file was damaged could not be rolled back at all."""
    env, budgets, snapshot = offline_site(tmp_path)
    with budgets.open("r+b") as damaged:
        damaged.write(b"not a database, overwritten")
    garbage = budgets.read_bytes()

    tested = ers(["backup", "--offline", "test-rollback", snapshot], env, tmp_path)
    assert tested.returncode == 0, tested.stderr
    assert "Traceback" not in tested.stderr
    rolled = ers(
        ["backup", "--offline", "rollback", snapshot, "--reason", "r", "--yes", "--json"],
        env,
        tmp_path,
    )

    assert rolled.returncode == 0, rolled.stderr
    with contextlib.closing(sqlite3.connect(budgets)) as db:
        assert db.execute("SELECT category, limit_cents FROM budgets").fetchall() == [
            ("food", 10000)
        ]
    safety = json.loads(rolled.stdout)["safetyBackupId"]
    kept = subprocess.run(
        ["restic", "dump", safety, "/budgets.sqlite3"],
        env={
            **os.environ,
            "RESTIC_REPOSITORY": env["ERS_RESTIC_REPOSITORY"],
            "RESTIC_PASSWORD_FILE": env["ERS_RESTIC_PASSWORD_FILE"],
        },
        capture_output=True,
        timeout=120,
    )
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout == garbage

    # The undo leaves out what no rollback can put back (before: every component, and it
    # failed its verify step on the damaged copy, "the snapshot may be damaged").
    reply = json.loads(rolled.stdout)
    assert reply["keptAsFound"] == ["budgets"]
    undo = shlex.split(reply["undoCommand"])
    assert "budgets" not in undo and "conversations" in undo, undo
    undone = ers([*undo[1:], "--json"], env, tmp_path)
    assert undone.returncode == 0, undone.stderr
    back = ers(
        ["backup", "--offline", "rollback", safety, "--components", "budgets"]
        + ["--reason", "r", "--yes"],
        env,
        tmp_path,
    )
    assert back.returncode == 4, back.stderr
    assert "holds budgets as a rollback found it, damaged" in back.stderr, back.stderr
    assert f"restic dump {safety[:8]} /budgets.sqlite3" in back.stderr, back.stderr


def test_a_component_file_gone_is_named_not_left_out(tmp_path: Path) -> None:
    """Before: offline commands left out a component whose file was missing: a full backup
    without it said it succeeded, and a rollback of the whole state skipped it, exit 0."""
    env, budgets, snapshot = offline_site(tmp_path)
    budgets.rename(tmp_path / "budgets.sqlite3.moved")

    created = ers(["backup", "create", "--offline", "--reason", "after"], env, tmp_path)
    assert created.returncode == 1
    assert f"the state file {budgets} does not exist" in created.stderr
    rolled = ers(
        ["backup", "--offline", "rollback", snapshot, "--reason", "r", "--yes"], env, tmp_path
    )
    assert rolled.returncode == 4
    assert f"the live file of budgets ({budgets}) is missing" in rolled.stderr
    assert not budgets.exists()
    listed = json.loads(ers(["backup", "list", "--offline", "--json"], env, tmp_path).stdout)
    assert [b["backupId"] for b in listed["backups"]] == [snapshot]


@pytest.mark.parametrize(
    "name,way_out",
    [
        ("budgets", "ers backup --offline rollback ID --components budgets"),
        ("incidents", "never rolled back: move it away (keep it), and ERS starts a new one"),
    ],
)
def test_a_start_on_a_damaged_file_is_refused_in_one_line_with_the_way_out(
    tmp_path: Path, name: str, way_out: str
) -> None:
    """Before: uvicorn's 84-line traceback of the failed start-up, exit 3 (the CLI's "cannot
    be reached"), and nothing said what to do."""
    env, budgets, snapshot = offline_site(tmp_path)
    state = budgets.with_name(f"{name}.sqlite3")
    with state.open("r+b") as damaged:
        damaged.write(b"not a database, overwritten")

    refused = ers(["serve", "--host", "127.0.0.1", "--port", str(free_port())], env, tmp_path)

    assert refused.returncode == 1, refused.stderr
    assert "Traceback" not in refused.stderr, refused.stderr
    [line] = [ln for ln in refused.stderr.splitlines() if "refusing to start" in ln]
    assert f"cannot open {state}" in line and "file is not a database" in line
    assert way_out in line
    if name == "incidents":
        return
    rolled = ers(
        ["backup", "--offline", "rollback", snapshot, "--components", "budgets"]
        + ["--reason", "damaged", "--yes"],
        env,
        tmp_path,
    )
    assert rolled.returncode == 0, rolled.stderr


def test_a_test_rollback_whose_copy_fails_its_check_exits_1(tmp_path: Path) -> None:
    """Before: exit 0 beside its own words "a rollback to it fails its verify step", so a
    script's `test-rollback ID && rollback ID` went on to the rollback."""
    env, _, _ = offline_site(tmp_path)
    made = tmp_path / "made"
    made.mkdir()
    (made / "budgets.sqlite3").write_bytes(b"not a database")
    tags = [arg for tag in tags_for(["budgets"], "manual") for arg in ("--tag", tag)]
    done = subprocess.run(
        ["restic", "backup", "--json", ".", *tags],
        cwd=made,
        env={
            **os.environ,
            "RESTIC_REPOSITORY": env["ERS_RESTIC_REPOSITORY"],
            "RESTIC_PASSWORD_FILE": env["ERS_RESTIC_PASSWORD_FILE"],
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    damaged = json.loads(done.stdout.splitlines()[-1])["snapshot_id"]

    tested = ers(["backup", "--offline", "test-rollback", damaged], env, tmp_path)

    assert tested.returncode == 1, tested.stdout
    assert "budgets: the snapshot's copy fails its check" in " ".join(tested.stdout.split())
    assert tested.stderr.splitlines()[-1] == (
        "ers: the snapshot's copy of budgets fails its check: a rollback to it would fail; see"
        " its output"
    )


def test_a_live_file_a_test_rollback_cannot_read_is_named_in_one_line(tmp_path: Path) -> None:
    """A live file that is no file SQLite can read for a reason other than its content (a
    folder in its place; a lock, a permission): before, a 44-line traceback ending in
    sqlite3's "disk I/O error"."""
    env, budgets, snapshot = offline_site(tmp_path)
    budgets.rename(tmp_path / "budgets.sqlite3.moved")
    budgets.mkdir()

    tested = ers(
        ["backup", "--offline", "test-rollback", snapshot, "--components", "budgets"],
        env,
        tmp_path,
    )

    assert tested.returncode == 1, tested.stderr
    assert "Traceback" not in tested.stderr, tested.stderr
    [line] = tested.stderr.splitlines()
    assert f"cannot read the live budgets file {budgets} to compare it" in line, line
