"""An operator's rollback still running when ``ers serve`` is stopped (SIGTERM) is cut short
once the in-flight requests' grace has run out: the service exits 0, the live state is the
one before the rollback, and the audit trail says that the rollback was attempted and cut
short, as it says of every rollback. A backup cut short the same way answers a 503 that says
so. Real ``ers serve``, real restic behind a wrapper whose ``restore`` (or ``backup``) is
slow."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ErsProcess, start_ers
from tests.processes import slow_restic

pytestmark = pytest.mark.integration

SLOW_RESTORE_S = 30  # longer than the grace a stopping server gives a request


def expenses(workdir: Path) -> int:
    with sqlite3.connect(workdir / "data" / "budgets.sqlite3") as db:
        return int(db.execute("SELECT count(*) FROM expenses").fetchone()[0])


def incidents_of(ers: ErsProcess, path: str) -> list[dict[str, Any]]:
    found = httpx.get(f"{ers.url}/api/emergency/incidents?limit=100", timeout=10).json()
    return [i for i in found["incidents"] if path in i["message"]]


def backed_up_then_spent(tmp_path: Path) -> tuple[ErsProcess, dict[str, str], str]:
    """ERS with its restores slow, a snapshot, then an expense it does not hold; returns the
    service, its settings and the snapshot's id."""
    env = {
        "ERS_BACKUPS_ENABLED": "true",
        "ERS_BACKUP_SCHEDULE_ENABLED": "false",
        "ERS_RESTIC_BINARY": str(slow_restic(tmp_path, seconds=SLOW_RESTORE_S)),
    }
    ers = start_ers(tmp_path / "ers", env=env)
    ers.wait_for_backups()
    with httpx.Client(base_url=ers.url, timeout=60) as http:
        made = http.post("/api/emergency/backups/create", json={})
        assert made.status_code == 200, made.text
        spent = http.post("/chat", json={"message": "spent $25 on groceries", "userId": "ann"})
        assert spent.status_code == 200 and expenses(tmp_path / "ers") == 1, spent.text
    return ers, env, str(made.json()["backupId"])


def test_a_rollback_cut_short_by_a_shutdown_is_in_the_audit_trail(tmp_path: Path) -> None:
    workdir = tmp_path / "ers"
    ers, env, backup_id = backed_up_then_spent(tmp_path)
    reply: dict[str, Any] = {}
    with httpx.Client(base_url=ers.url, timeout=60) as http:

        def roll_back() -> None:
            body = {"backupId": backup_id, "confirm": True, "reason": "bad import"}
            try:
                reply["response"] = http.post("/api/emergency/rollback", json=body)
            except httpx.HTTPError as exc:
                reply["error"] = exc

        sender = threading.Thread(target=roll_back)
        sender.start()
        time.sleep(2)  # the rollback is restoring
        assert ers.stop(signal.SIGTERM, timeout=60) == 0
        sender.join(timeout=30)
    answered = reply.get("response")
    assert answered is not None, reply
    assert answered.status_code == 503 and "cut short" in answered.json()["detail"], answered.text

    again = start_ers(workdir, env={**env, "ERS_RESTIC_BINARY": "restic"})
    try:
        assert expenses(workdir) == 1  # the live state is the one before the rollback
        entries = httpx.get(f"{again.url}/api/emergency/audit", timeout=10).json()["entries"]
        rollbacks = [e for e in entries if e["action"] == "rollback"]
        assert len(rollbacks) == 1, entries
        (entry,) = rollbacks
        assert entry["actor"] == "admin" and entry["detail"]["reason"] == "bad import", entry
        assert "stopped" in entry["detail"]["error"], entry
        # The operator's stop is no incident (before: a medium one, which alerts landed on).
        assert incidents_of(again, "/api/emergency/rollback") == []
    finally:
        assert again.stop() == 0
    assert "Exception in ASGI application" not in ers.log(), ers.log()[-3000:]


def test_a_backup_cut_short_by_a_shutdown_answers_503_in_words(tmp_path: Path) -> None:
    """Before: uvicorn's bare "Internal Server Error" and an "Exception in ASGI application"
    traceback in the log."""
    env = {
        "ERS_BACKUPS_ENABLED": "true",
        "ERS_BACKUP_SCHEDULE_ENABLED": "false",
        "ERS_SHUTDOWN_BACKUP_TIMEOUT_S": "2",
        "ERS_RESTIC_BINARY": str(slow_restic(tmp_path, "backup", seconds=SLOW_RESTORE_S)),
    }
    ers = start_ers(tmp_path / "ers", env=env)
    ers.wait_for_backups()
    reply: dict[str, Any] = {}

    def back_up() -> None:
        try:
            reply["response"] = httpx.post(
                f"{ers.url}/api/emergency/backups/create", json={}, timeout=60
            )
        except httpx.HTTPError as exc:
            reply["error"] = exc

    sender = threading.Thread(target=back_up)
    sender.start()
    time.sleep(2)  # restic is "backing up"
    assert ers.stop(signal.SIGTERM, timeout=60) == 0
    sender.join(timeout=30)
    answered = reply.get("response")
    assert answered is not None, reply
    assert answered.status_code == 503, answered.text
    said = answered.json()
    assert said["error"] == "service unavailable"
    assert said["detail"].startswith("backup cut short: the service stopped before it finished")
    assert "GET /api/emergency/backups" in said["detail"], said
    assert "Exception in ASGI application" not in ers.log(), ers.log()[-3000:]
    again = start_ers(tmp_path / "ers", env={**env, "ERS_RESTIC_BINARY": "restic"})
    try:
        assert incidents_of(again, "/api/emergency/backups/create") == []
    finally:
        assert again.stop() == 0


def test_a_rollback_a_kill_cuts_off_is_in_the_audit_trail_by_its_start(tmp_path: Path) -> None:
    """``kill -9`` gives no grace to write the outcome: the entry written before the rollback
    began is what the trail keeps of it (before: nothing at all)."""
    workdir = tmp_path / "ers"
    ers, env, backup_id = backed_up_then_spent(tmp_path)
    with httpx.Client(base_url=ers.url, timeout=60) as http:
        body = {"backupId": backup_id, "confirm": True, "reason": "bad import"}

        def roll_back() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the kill cuts the connection
                http.post("/api/emergency/rollback", json=body)

        sender = threading.Thread(target=roll_back)
        sender.start()
        time.sleep(2)  # the rollback is restoring
        ers.stop(signal.SIGKILL)
        sender.join(timeout=30)

    again = start_ers(workdir, env={**env, "ERS_RESTIC_BINARY": "restic"})
    try:
        assert expenses(workdir) == 1  # the live state is the one before the rollback
        entries = httpx.get(f"{again.url}/api/emergency/audit", timeout=10).json()["entries"]
        # The start tells the rollback was cut off: its process is gone, its outcome unwritten.
        assert [e["action"] for e in entries] == ["rollback_interrupted", "rollback_started"]
        told, entry = entries
        assert entry["actor"] == "admin" and entry["detail"]["reason"] == "bad import", entry
        assert entry["detail"]["backupId"] == backup_id, entry
        assert told["actor"] == "ers" and told["detail"]["run"] == entry["detail"]["run"], told
        assert told["detail"]["backupId"] == backup_id and told["detail"]["startedBy"] == "admin"
        assert "recorded as rollback_interrupted" in again.log()
    finally:
        assert again.stop() == 0
