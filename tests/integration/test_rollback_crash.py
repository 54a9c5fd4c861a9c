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
from tests.integration.test_datadir_lock import ers
from tests.processes import ers_env, free_port

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


# A test-only sitecustomize that SIGKILLs the process between two renames of a swap.
SWAP_KILL_HOOK = Path(__file__).parent / "swap_kill"
SWAPPED = ("conversations", "budgets", "profiles", "system_state")


def kill_in_swap_env(renames: int) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(SWAP_KILL_HOOK), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "ERS_TEST_KILL_AFTER_RENAMES": str(renames)}


def state_of(data: Path) -> dict[str, object]:
    """What each component holds, in what a restart of the service leaves alone."""
    conversations = content(data / "conversations.sqlite3")
    isolations = content(data / "system_state.sqlite3")["state"]
    return {
        "conversations": len(conversations["turns"]),
        "budgets": content(data / "budgets.sqlite3"),
        "profiles": content(data / "profiles.sqlite3")["profiles"],
        "system_state": sorted(
            (key, json.loads(value)["state"])
            for key, value, _ in isolations
            if str(key).startswith("breaker:")
        ),
    }


def put_profile(service: ErsProcess, user: str, age: int) -> None:
    reply = httpx.put(f"{service.url}/api/profiles/{user}", json={"age": age}, timeout=30)
    assert reply.status_code == 200, reply.text


def prepare_every_component(
    workdir: Path, env: dict[str, str]
) -> tuple[ErsProcess, str, dict[str, object]]:
    """A full snapshot, then changes to every component after it; returns the service, the
    snapshot id and the state before the rollback."""
    service = start_ers(workdir, env=env)
    chat(service, "set my food budget to $100")
    put_profile(service, "a", 30)
    service.wait_for_backups()
    created = httpx.post(f"{service.url}/api/emergency/backups/create", json={}, timeout=120)
    assert created.status_code == 200, created.text
    in_snapshot = state_of(workdir / "data")
    for n in range(5):
        chat(service, f"spent ${n + 10} on lunch")
    put_profile(service, "b", 40)
    put_profile(service, "c", 50)
    disabled = httpx.post(f"{service.url}/api/emergency/circuit-breaker/budget/disable", timeout=30)
    assert disabled.status_code == 200, disabled.text
    before = state_of(workdir / "data")
    differing = [name for name in SWAPPED if before[name] == in_snapshot[name]]
    assert not differing, f"the test changes every component, not {differing}"
    return service, created.json()["backupId"], before


def assert_all_old_after_restart(workdir: Path, before: dict[str, object]) -> str:
    """Start the service again: it undoes the cut swap before its stores open, and says so."""
    data = workdir / "data"
    journal = json.loads((data / ".ers-swap-journal.json").read_text())
    restarted = start_ers(workdir, env=BACKUP_ENV)
    assert restarted.stop() == 0, restarted.log()[-3000:]
    # ... and writes it in the audit trail, beside the rollbacks people made.
    audit = content(data / "incidents.sqlite3")["audit"]
    [(actor, detail)] = [
        (row[2], json.loads(row[4])) for row in audit if row[3] == "rollback_undone"
    ]
    assert actor == "ers" and detail["safetyBackupId"] == journal["safety_snapshot"]
    assert "conversations.sqlite3" in detail["putBack"] + detail["untouched"], detail
    for db in data.glob("*.sqlite3"):
        assert integrity(db) == "ok", db
    assert state_of(data) == before, "a component is not the state from before the rollback"
    assert not list(data.glob("*.ers-old-*")) and not list(data.glob(".ers-swap-journal*"))
    [line] = [ln for ln in restarted.log().splitlines() if "undid the rollback" in ln]
    return line


@pytest.mark.parametrize("renames", [1, 4], ids=["after-first-rename", "after-last-rename"])
def test_kill_9_in_the_swap_of_a_full_rollback_is_undone_on_restart(
    tmp_path: Path, renames: int
) -> None:
    # The hook fires in the rollback's swap, and only there (see SWAP_KILL_HOOK).
    env = {**BACKUP_ENV, **kill_in_swap_env(renames)}
    service, backup_id, before = prepare_every_component(tmp_path, env)
    body = {"backupId": backup_id, "confirm": True, "reason": "swapkill"}
    with contextlib.suppress(httpx.HTTPError):  # the kill cuts the answer short
        httpx.post(f"{service.url}/api/emergency/rollback", json=body, timeout=120)
    assert service.process.wait(timeout=30) == -signal.SIGKILL
    data = tmp_path / "data"
    if renames < len(SWAPPED):
        mixed = state_of(data)
        assert [n for n in SWAPPED if mixed[n] == before[n]], "the kill came after the swap"
        assert [n for n in SWAPPED if mixed[n] != before[n]], "the kill came before the swap"
    journal = json.loads((data / ".ers-swap-journal.json").read_text())
    safety = journal["safety_snapshot"]

    line = assert_all_old_after_restart(tmp_path, before)

    assert f"snapshot {backup_id[:8]}" in line and f"safety snapshot {safety[:8]}" in line
    assert "put back conversations.sqlite3" in line
    listed = json.loads(restic(tmp_path, "snapshots", "--json", "--tag", "reason:pre-rollback"))
    assert [s["short_id"] for s in listed] == [safety[:8]]
    # The snapshot the line names holds the state the restart kept.
    copy = tmp_path / "safety-conversations.sqlite3"
    with copy.open("wb") as out:
        restic(tmp_path, "dump", safety, "/conversations.sqlite3", stdout=out)
    assert len(content(copy)["turns"]) == before["conversations"]


def test_kill_9_in_the_swap_of_an_offline_rollback_is_undone_on_restart(tmp_path: Path) -> None:
    service, backup_id, before = prepare_every_component(tmp_path, BACKUP_ENV)
    assert service.stop() == 0
    before = state_of(tmp_path / "data")  # the shutdown wrote nothing the rollback undoes
    killed = ers(
        tmp_path,
        *("backup", "rollback", backup_id, "--offline", "--reason", "swapkill", "--yes"),
        **kill_in_swap_env(renames=2),
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert (tmp_path / "data" / ".ers-swap-journal.json").exists()

    line = assert_all_old_after_restart(tmp_path, before)

    assert "put back conversations.sqlite3, budgets.sqlite3" in line


def test_an_offline_command_that_undoes_a_swap_writes_it_in_the_audit_trail(
    tmp_path: Path,
) -> None:
    service, backup_id, before = prepare_every_component(tmp_path, BACKUP_ENV)
    assert service.stop() == 0
    before = state_of(tmp_path / "data")
    killed = ers(
        tmp_path,
        *("backup", "rollback", backup_id, "--offline", "--reason", "swapkill", "--yes"),
        **kill_in_swap_env(renames=2),
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    safety = json.loads((tmp_path / "data" / ".ers-swap-journal.json").read_text())

    listed = ers(tmp_path, "backup", "--offline", "list")

    assert listed.returncode == 0, listed.stdout + listed.stderr
    data = tmp_path / "data"
    assert state_of(data) == before
    assert not list(data.glob(".ers-swap-journal*"))
    # Before: in its log line alone, not in the trail the service's undo is written in.
    audit = content(data / "incidents.sqlite3")["audit"]
    [(actor, detail)] = [
        (row[2], json.loads(row[4])) for row in audit if row[3] == "rollback_undone"
    ]
    assert actor == "offline" and detail["safetyBackupId"] == safety["safety_snapshot"]
    assert detail["putBack"] == ["conversations.sqlite3", "budgets.sqlite3"], detail


def test_a_swap_that_cannot_be_undone_stops_start_up_and_keeps_its_files(
    tmp_path: Path,
) -> None:
    env = {**BACKUP_ENV, **kill_in_swap_env(renames=1)}
    service, backup_id, before = prepare_every_component(tmp_path, env)
    body = {"backupId": backup_id, "confirm": True, "reason": "swapkill"}
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"{service.url}/api/emergency/rollback", json=body, timeout=120)
    assert service.process.wait(timeout=30) == -signal.SIGKILL
    data = tmp_path / "data"
    [old] = data.glob("conversations.sqlite3.ers-old-*")
    (data / ".ers-swap-journal.json").write_text("{damaged")

    refused = ers(tmp_path, "serve", "--host", "127.0.0.1", "--port", str(free_port()))

    assert refused.returncode != 0
    [line] = [ln for ln in refused.stderr.splitlines() if "refusing to start" in ln]
    assert ".ers-swap-journal.json cannot be read" in line and "Move the journal" in line
    assert old.exists() and len(content(old)["turns"]) == before["conversations"]
    assert (data / ".ers-swap-journal.json").exists()

    # What the line says to do brings the whole state back.
    (data / ".ers-swap-journal.json").rename(tmp_path / "journal.json")
    listed = json.loads(restic(tmp_path, "snapshots", "--json", "--tag", "reason:pre-rollback"))
    [safety] = [s["short_id"] for s in listed]
    back = ers(tmp_path, "backup", "rollback", safety, "--offline", "--reason", "repair", "--yes")
    assert back.returncode == 0, back.stdout + back.stderr
    assert state_of(data) == before
