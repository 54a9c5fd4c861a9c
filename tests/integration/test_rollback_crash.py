"""kill -9 in the middle of a rollback, online (through the running service) and offline
(``ers backup rollback --offline``): afterwards each component file is wholly the old state
or wholly the snapshot's, the repository passes ``restic check``, and every write
acknowledged before the rollback started is either live or in the newest snapshot of the
component (the rollback's safety snapshot)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ErsProcess, start_ers
from tests.integration.test_crash_recovery import BACKUP_ENV, integrity
from tests.integration.test_datadir_lock import ers, ers_env

Content = dict[str, list[tuple[object, ...]]]
# When to kill, after the rollback's scratch folder appears: at once (restore and safety
# snapshot under way), later in them, about when the swap runs, and (None) as soon as a live
# file has its second name, which it has only during the swap and reopen.
MOMENTS = (0.0, 1.0, 2.0, None)


def content(db_path: Path) -> Content:
    db = sqlite3.connect(db_path)
    try:
        tables = [
            row[0]
            for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        return {t: sorted(db.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables}
    finally:
        db.close()


def restic(workdir: Path, *args: str, stdout: object = subprocess.PIPE) -> bytes:
    done = subprocess.run(
        ["restic", "--repo", str(workdir / "repo"), "--no-lock", *args],
        env={**os.environ, "RESTIC_PASSWORD_FILE": str(workdir / "restic-password")},
        stdout=stdout,  # type: ignore[arg-type]
        stderr=subprocess.PIPE,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout or b""


def newest_budgets_snapshot(workdir: Path) -> Content:
    """The content of budgets in the newest snapshot holding it, as restic itself gives it."""
    listed = json.loads(restic(workdir, "snapshots", "--json", "--tag", "component:budgets"))
    newest = max(listed, key=lambda s: s["time"])
    copy = workdir / "newest-budgets.sqlite3"
    with copy.open("wb") as out:
        restic(workdir, "dump", newest["id"], "/budgets.sqlite3", stdout=out)
    return content(copy)


def chat(service: ErsProcess, message: str) -> None:
    reply = httpx.post(f"{service.url}/chat", json={"message": message, "userId": "k"}, timeout=30)
    assert reply.status_code == 200 and reply.json()["success"], reply.text


def prepare(workdir: Path) -> tuple[ErsProcess, str, Content, Content]:
    """A service with a budgets snapshot, then acknowledged writes after it; returns the
    service, the snapshot id, the snapshot's content and the content before the rollback."""
    service = start_ers(workdir, env=BACKUP_ENV)
    chat(service, "set my food budget to $100")
    for n in range(3):
        chat(service, f"spent ${n + 1} on coffee")
    service.wait_for_backups()
    created = httpx.post(
        f"{service.url}/api/emergency/backups/create", json={"type": "budgets"}, timeout=120
    )
    assert created.status_code == 200, created.text
    live = workdir / "data" / "budgets.sqlite3"
    in_snapshot = content(live)
    chat(service, "set my food budget to $250")
    for n in range(10):
        chat(service, f"spent ${n + 10} on lunch")
    before = content(live)
    assert before != in_snapshot
    return service, created.json()["backupId"], in_snapshot, before


def wait_for(moment: float | None, data: Path, running: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while not any(data.glob(".ers-rollback-*")):
        assert running.poll() is None, "the process ended before its rollback started"
        assert time.monotonic() < deadline, "the rollback never started"
        time.sleep(0.005)
    if moment is not None:
        time.sleep(moment)
        return
    # Polling may miss the swap's short window; the kill then lands after the rollback,
    # which the checks accept as well.
    while not any(data.glob("*.ers-old-*")) and any(data.glob(".ers-rollback-*")):
        assert time.monotonic() < deadline, "the rollback never reached its swap"
        time.sleep(0.001)


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def wait_gone(pids: list[int]) -> None:
    """restic runs the service started outlive it; they end on their own (bounded)."""
    deadline = time.monotonic() + 120
    for pid in pids:
        while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
            assert time.monotonic() < deadline, f"process {pid} still runs"
            time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def assert_whole_and_nothing_lost(workdir: Path, in_snapshot: Content, before: Content) -> str:
    data = workdir / "data"
    for db in data.glob("*.sqlite3"):
        assert integrity(db) == "ok", db
    now = content(data / "budgets.sqlite3")
    assert now in (before, in_snapshot), "budgets is neither the old state nor the snapshot's"
    if now == in_snapshot:
        # The swap happened, so the safety snapshot had finished before it: it holds every
        # write acknowledged before the rollback.
        assert newest_budgets_snapshot(workdir) == before
    checked = ers(workdir, "backup", "check", "--offline", "--json")
    assert checked.returncode == 0 and json.loads(checked.stdout)["ok"] is True, (
        checked.stdout + checked.stderr
    )
    return "new" if now == in_snapshot else "old"


def restart_and_read(workdir: Path) -> None:
    restarted = start_ers(workdir, env=BACKUP_ENV)
    try:
        chat(restarted, "budget report")
        assert not list((workdir / "data").glob("*.ers-old-*"))
    finally:
        assert restarted.stop() == 0, restarted.log()[-3000:]


@pytest.mark.parametrize("moment", MOMENTS)
def test_kill_9_during_an_online_rollback_leaves_each_file_whole(
    tmp_path: Path, moment: float | None
) -> None:
    service, backup_id, in_snapshot, before = prepare(tmp_path)
    body = {"backupId": backup_id, "components": ["budgets"], "confirm": True, "reason": "r"}

    def roll_back() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the kill cuts the answer short
            httpx.post(f"{service.url}/api/emergency/rollback", json=body, timeout=120)

    request = threading.Thread(target=roll_back)
    request.start()
    wait_for(moment, tmp_path / "data", service.process)
    children = children_of(service.process.pid)
    service.process.send_signal(signal.SIGKILL)
    service.process.wait(timeout=10)
    request.join(timeout=30)
    wait_gone(children)

    assert_whole_and_nothing_lost(tmp_path, in_snapshot, before)
    restart_and_read(tmp_path)


@pytest.mark.parametrize("moment", MOMENTS)
def test_kill_9_during_an_offline_rollback_leaves_each_file_whole(
    tmp_path: Path, moment: float | None
) -> None:
    service, backup_id, in_snapshot, before = prepare(tmp_path)
    assert service.stop() == 0
    # The command and its restic die together, as on a power loss of the session.
    rollback = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "backup", "rollback", backup_id, "--offline"]
        + ["--components", "budgets", "--reason", "r", "--yes"],
        env=ers_env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(moment, tmp_path / "data", rollback)
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have finished already
            os.killpg(rollback.pid, signal.SIGKILL)
        rollback.wait(timeout=10)

    assert_whole_and_nothing_lost(tmp_path, in_snapshot, before)
    restart_and_read(tmp_path)
