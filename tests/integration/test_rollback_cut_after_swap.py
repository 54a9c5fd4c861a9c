"""A rollback killed (``kill -9``) after its swap committed, while its record was written to
the repository. Before: the next start recorded it as ``rollback_interrupted`` in words that
said the live state was the one before it, when it was the snapshot's, and named neither the
safety snapshot holding the state put aside nor what was rolled back. Real ``ers serve``,
real restic behind a wrapper that is slow to write the rollback's record."""

from __future__ import annotations

import contextlib
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.backups.cut_off import SWAPPED_THEN_CUT
from tests.conftest import start_ers
from tests.processes import slow_restic

pytestmark = pytest.mark.integration


def expenses(workdir: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(workdir / "data" / "budgets.sqlite3")) as db:
        return [str(row[0]) for row in db.execute("SELECT note FROM expenses")]


def test_a_rollback_killed_after_its_swap_is_told_as_done_at_the_next_start(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "writing-the-record"
    workdir = tmp_path / "ers"
    env = {
        "ERS_BACKUPS_ENABLED": "true",
        "ERS_BACKUP_SCHEDULE_ENABLED": "false",
        "ERS_RESTIC_BINARY": str(slow_restic(tmp_path, "rollback.json", 20, marker)),
    }
    ers = start_ers(workdir, env=env)
    ers.wait_for_backups()
    with httpx.Client(base_url=ers.url, timeout=60) as http:
        taken = http.post("/api/emergency/backups/create", json={"type": "budgets"})
        assert taken.status_code == 200, taken.text
        snapshot = taken.json()["backupId"]
        spent = http.post("/chat", json={"message": "spent $25 on groceries", "userId": "bob"})
        assert "Recorded" in spent.json()["response"], spent.text
        assert expenses(workdir) == ["spent $25 on groceries"]
        body = {"backupId": snapshot, "confirm": True, "reason": "bad import"}
        body["components"] = ["budgets"]

        def roll_back() -> None:  # its answer never comes: the service is killed first
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(f"{ers.url}/api/emergency/rollback", json=body, timeout=60)

        threading.Thread(target=roll_back, daemon=True).start()
        for _ in range(300):  # at most a minute
            if marker.exists():
                break
            time.sleep(0.2)
        assert marker.exists(), "the rollback never wrote its record"
    ers.stop(signal.SIGKILL)

    again = start_ers(workdir, env={**env, "ERS_RESTIC_BINARY": shutil.which("restic") or ""})
    try:
        try:
            again.wait_for_backups()
        except TimeoutError:
            raise AssertionError(again.log()[-3000:]) from None
        with httpx.Client(base_url=again.url, timeout=60) as http:
            entries = http.get("/api/emergency/audit").json()["entries"]
        assert expenses(workdir) == []  # the swap had committed: rolled back
        (told,) = [e for e in entries if e["action"] == "rollback_interrupted"]
        (swapped,) = [e for e in entries if e["action"] == "rollback_swapped"]
        detail = told["detail"]
        assert detail["outcome"] == SWAPPED_THEN_CUT
        assert detail["rolledBack"] == ["budgets"]
        safety = swapped["detail"]["safetyBackupId"]
        assert safety and detail["safetyBackupIds"] == {"budgets": safety}, told
        assert detail["backupId"].startswith(snapshot[:8]), told
        said = (
            f"after its swap committed: budgets rolled back to {snapshot[:8]} (the state "
            f"before in safety snapshot {safety[:8]})"
        )
        assert said in again.log()
    finally:
        assert again.stop() == 0
