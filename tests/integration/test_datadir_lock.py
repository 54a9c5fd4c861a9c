"""A running service holds its state: an offline rollback, or a second service, is refused
while it runs, and works again once it has stopped, however it stopped (SIGTERM, kill -9).
On PostgreSQL, replicas share the state and an offline rollback is refused while any runs."""

from __future__ import annotations

import json
import shlex
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest

from service.fleet.datadir_lock import LOCK_FILE_NAME
from service.fleet.presence import LIVE_STATE_LOCK_KEY
from tests.conftest import ErsProcess, start_ers
from tests.processes import ers_env, free_port

BACKUPS_ON = {"ERS_BACKUPS_ENABLED": "true", "ERS_BACKUP_SCHEDULE_ENABLED": "false"}
OFFLINE_ADVICE = "stop the service first, or run the command without --offline"


def ers(workdir: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=ers_env(workdir, **extra),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=180,
    )


def offline_rollback(
    workdir: Path, backup_id: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    return ers(
        workdir,
        *("backup", "rollback", backup_id, "--offline", "--components", "budgets"),
        *("--reason", "restore the old budget", "--yes", "--json"),
        **extra,
    )


def budgets(workdir: Path) -> list[tuple[object, ...]]:
    db = sqlite3.connect(workdir / "data" / "budgets.sqlite3")
    try:
        return db.execute("SELECT category, limit_cents FROM budgets ORDER BY 1").fetchall()
    finally:
        db.close()


def chat(ers_process: ErsProcess, message: str) -> None:
    reply = httpx.post(
        f"{ers_process.url}/chat", json={"message": message, "userId": "lock"}, timeout=30
    )
    assert reply.status_code == 200 and reply.json()["success"], reply.text


def service_with_a_budgets_backup(workdir: Path) -> tuple[ErsProcess, str]:
    """A service whose budgets were $100 at the backup and $250 since."""
    service = start_ers(workdir, env=BACKUPS_ON)
    chat(service, "set my food budget to $100")
    service.wait_for_backups()
    created = httpx.post(
        f"{service.url}/api/emergency/backups/create", json={"type": "budgets"}, timeout=120
    )
    assert created.status_code == 200, created.text
    chat(service, "set my food budget to $250")
    assert budgets(workdir) == [("food", 25000)]
    return service, created.json()["backupId"]


def test_offline_rollback_and_a_second_service_are_refused_while_the_service_runs(
    tmp_path: Path,
) -> None:
    service, backup_id = service_with_a_budgets_backup(tmp_path)
    live = tmp_path / "data" / "budgets.sqlite3"
    inode = live.stat().st_ino
    try:
        refused = offline_rollback(tmp_path, backup_id)
        assert refused.returncode != 0, refused.stdout
        assert f"pid {service.process.pid}" in refused.stderr, refused.stderr
        assert OFFLINE_ADVICE in refused.stderr, refused.stderr
        # Nothing moved: the service's open file is still the live one, with its rows.
        assert live.stat().st_ino == inode
        assert budgets(tmp_path) == [("food", 25000)]

        with pytest.raises(RuntimeError) as second:
            start_ers(tmp_path, env=BACKUPS_ON)
        # One line and exit 2 (unusable settings), before the server says anything.
        said = str(second.value).split("\n", 1)
        assert said[0] == "ers exited with 2:", str(second.value)
        [refusal] = said[1].strip().splitlines()
        assert refusal.startswith("ers: refusing to start: "), refusal
        assert f"pid {service.process.pid}" in refusal
        # Its own data directory alone would leave both services on one repository.
        assert "own ERS_DATA_DIR and its own ERS_RESTIC_REPOSITORY" in refusal, refusal

        # A read goes on beside the running service.
        listed = ers(tmp_path, "backup", "list", "--offline", "--json")
        assert listed.returncode == 0, listed.stderr
        snapshots = json.loads(listed.stdout)["backups"]
        assert any(s["backupId"].startswith(backup_id) for s in snapshots)
        # The first service kept serving, and its writes still land in the live file.
        chat(service, "set my food budget to $300")
        assert budgets(tmp_path) == [("food", 30000)]
    finally:
        assert service.stop() == 0, service.log()[-3000:]

    rolled = offline_rollback(tmp_path, backup_id)
    assert rolled.returncode == 0, rolled.stderr
    rollback = json.loads(rolled.stdout)
    assert rollback["safetyBackupId"]
    assert budgets(tmp_path) == [("food", 10000)]
    # ... and a service started afterwards reads the rolled-back state.
    restarted = start_ers(tmp_path)
    try:
        report = httpx.post(
            f"{restarted.url}/chat", json={"message": "budget report", "userId": "lock"}, timeout=30
        )
        assert report.status_code == 200 and "$100" in report.text, report.text
        # In the audit trail as the service's rollbacks are (before: not at all).
        trail = httpx.get(f"{restarted.url}/api/emergency/audit", timeout=10).json()["entries"]
        assert [(e["actor"], e["action"]) for e in trail] == [
            ("offline", "rollback"),
            ("offline", "rollback_swapped"),
            ("offline", "rollback_started"),
        ], trail
        assert trail[0]["detail"]["safetyBackupId"] == rollback["safetyBackupId"], trail
        assert trail[0]["detail"]["components"] == ["budgets"] and not trail[0]["detail"]["error"]
    finally:
        assert restarted.stop() == 0

    # The printed undo of an offline rollback is offline too, and runs as printed with no
    # service to ask (before: it lacked --offline and failed to reach one).
    undo = shlex.split(rollback["undoCommand"])
    assert undo[:3] == ["ers", "backup", "rollback"] and "--offline" in undo, undo
    undone = ers(tmp_path, *undo[1:])
    assert undone.returncode == 0, undone.stderr
    assert budgets(tmp_path) == [("food", 30000)]

    # Without --components a snapshot of some components rolls back just those, offline as
    # online (before: offline named all four and refused a snapshot of budgets alone).
    safety = undone.stdout.split("the state before is in snapshot ")[1].split(";")[0]
    again = ers(tmp_path, "backup", "rollback", safety, "--offline", "--reason", "again", "--yes")
    assert again.returncode == 0, again.stderr
    assert budgets(tmp_path) == [("food", 10000)]


def test_after_a_kill_9_the_lock_file_left_behind_blocks_nothing(tmp_path: Path) -> None:
    service, backup_id = service_with_a_budgets_backup(tmp_path)
    lock_file = tmp_path / "data" / LOCK_FILE_NAME
    assert f"pid {service.process.pid}" in lock_file.read_text()
    service.process.send_signal(signal.SIGKILL)
    service.process.wait(timeout=10)
    # The file is still there and still names the dead process: the kernel dropped the flock.
    assert f"pid {service.process.pid}" in lock_file.read_text()

    rolled = offline_rollback(tmp_path, backup_id)
    assert rolled.returncode == 0, rolled.stderr
    assert budgets(tmp_path) == [("food", 10000)]
    restarted = start_ers(tmp_path)
    assert restarted.stop() == 0


def test_on_postgresql_an_offline_rollback_is_refused_while_a_replica_runs(
    tmp_path: Path, pg_url: str
) -> None:
    env = {"ERS_DATABASE_URL": pg_url}
    # Replicas share the state: two of them on one data directory both start.
    first = start_ers(tmp_path, env=env)
    second = start_ers(tmp_path, env=env)
    try:
        # The state is on the server, yet the data directory is made: without it the disk
        # check failed and held every replica's system state degraded.
        disk = httpx.get(f"{first.url}/api/emergency/health", timeout=10).json()["checks"]["disk"]
        assert disk["status"] == "healthy", disk
        second.stop()
        refused = offline_rollback(tmp_path, "deadbeef", ERS_DATABASE_URL=pg_url)
        assert refused.returncode != 0
        assert f"pid {first.process.pid}" in refused.stderr, refused.stderr
        assert OFFLINE_ADVICE in refused.stderr, refused.stderr
        assert pg_url not in refused.stderr
    finally:
        assert first.stop() == 0, first.log()[-3000:]
    # No replica left: the lock no longer stands in the way (the made-up snapshot does).
    after = offline_rollback(tmp_path, "deadbeef", ERS_DATABASE_URL=pg_url)
    assert "in use" not in after.stderr, after.stderr
    # It never began (no repository to roll back from): nothing in the fleet's audit trail.
    with psycopg.connect(pg_url, autocommit=True) as db:
        assert db.execute("SELECT count(*) FROM ers_incidents.audit").fetchone() == (0,)

    # While an offline command holds the state, a replica refuses to start, in one line.
    with psycopg.connect(pg_url, autocommit=True) as offline:
        offline.execute("SELECT pg_advisory_lock(%s)", (LIVE_STATE_LOCK_KEY,))
        with pytest.raises(RuntimeError) as refused_start:
            start_ers(tmp_path, env=env)
    # Exit 2 and one line of its own after uvicorn's two, as on SQLite (where it comes first).
    said = str(refused_start.value).split("\n", 1)
    assert said[0] == "ers exited with 2:", str(refused_start.value)
    [refusal] = [line for line in said[1].strip().splitlines() if "ers: " in line]
    assert refusal.startswith("ers: refusing to start"), refusal
    assert "Traceback" not in str(refused_start.value), str(refused_start.value)


def test_a_replica_whose_database_does_not_answer_fails_its_start_with_exit_1(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "ers"
    workdir.mkdir()
    nowhere = f"postgresql://ers@127.0.0.1:{free_port()}/ers"
    port = str(free_port())

    refused = ers(workdir, "serve", "--port", port, ERS_DATABASE_URL=nowhere)

    # Before: exit 2, "bad usage ... unusable settings", for a server that was down.
    assert refused.returncode == 1, refused.stderr
    [line] = [ln for ln in refused.stderr.splitlines() if "refusing to start" in ln]
    assert "cannot take the live state's lock" in line and "once the server answers" in line
    assert "Traceback" not in refused.stderr, refused.stderr


def test_a_replica_whose_database_refuses_its_settings_stops_with_exit_2(
    tmp_path: Path, pg_url: str
) -> None:
    workdir = tmp_path / "ers"
    workdir.mkdir()
    base, _, _ = pg_url.rpartition("/")
    port = str(free_port())

    refused = ers(workdir, "serve", "--port", port, ERS_DATABASE_URL=f"{base}/no_such_db")

    # A database that does not exist is a setting to fix, not a server away: restarting it
    # (a supervisor's answer to exit 1) would fail the same way each time.
    assert refused.returncode == 2, refused.stderr
    [line] = [ln for ln in refused.stderr.splitlines() if "refusing to start" in ln]
    assert '"no_such_db" does not exist' in line and "once the server answers" not in line
