"""A rollback killed (``kill -9``) after its swap committed, while its record was written to
the repository. Before: the next start recorded it as ``rollback_interrupted`` in words that
said the live state was the one before it, when it was the snapshot's, and named neither the
safety snapshot holding the state put aside nor what was rolled back. Real ``ers serve``,
real restic behind a wrapper that is slow to write the rollback's record."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from backup.lineage import mark_from_restic
from service.backups.cut_off import SWAPPED_THEN_CUT
from tests.conftest import run_restic, start_ers
from tests.integration.test_backups_on_postgres import budget_incident
from tests.processes import rollback_until_recording, slow_restic

pytestmark = pytest.mark.integration


def expenses(workdir: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(workdir / "data" / "budgets.sqlite3")) as db:
        return [str(row[0]) for row in db.execute("SELECT note FROM expenses")]


def run_json(workdir: Path, *args: str) -> list[dict[str, Any]]:
    """restic's JSON answer to ``args`` on the service's repository."""
    done = run_restic(workdir / "repo", workdir / "restic-password", *args)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def offline_list(workdir: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """``ers backup --offline list -o json`` with the settings the service had."""
    settings = {
        "ERS_ENV": "test",
        "ERS_DATA_DIR": str(workdir / "data"),
        "ERS_RESTIC_REPOSITORY": str(workdir / "repo"),
        "ERS_RESTIC_PASSWORD_FILE": str(workdir / "restic-password"),
    }
    outside = {k: v for k, v in os.environ.items() if not k.startswith(("ERS_", "OTEL_"))}
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "backup", "--offline", "list", "-o", "json"],
        env=outside | settings | {"ERS_BACKUPS_ENABLED": env["ERS_BACKUPS_ENABLED"]},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout)["backups"])


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
        # The state the rollback puts aside, in a snapshot of its own.
        aside = http.post("/api/emergency/backups/create", json={"type": "budgets"})
        assert aside.status_code == 200, aside.text
        body = {"backupId": snapshot, "confirm": True, "reason": "bad import"}
        body["components"] = ["budgets"]
        rollback_until_recording(ers.url, body, marker, "the rollback never wrote its record")
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
        swap_time = datetime.fromisoformat(swapped["at"])
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
        assert "what follows the swap of budgets a rollback cut off: done" in again.log()
        # Before: the list marked the snapshot put aside only once the record was written.
        with httpx.Client(base_url=again.url, timeout=60) as http:
            listed = http.get("/api/emergency/backups").json()["backups"]
        put_aside = {b["backupId"] for b in listed if b["putAside"]}
        assert put_aside == {aside.json()["backupId"]}, listed
        again.stop(signal.SIGKILL)  # no final backup, which would stand for the live state
        offline = offline_list(workdir, env)
        assert {b["backupId"] for b in offline if b["putAside"]} == put_aside, offline
        again = start_ers(workdir, env={**env, "ERS_RESTIC_BINARY": shutil.which("restic") or ""})
        again.wait_for_backups()

        # Before: its record never written, a rollback to before a later incident took the
        # snapshot holding the state this one put aside (the $25 brought back). The test
        # rollback writes nothing; the rollback writes the record first.
        target = {"beforeIncident": "", "components": ["budgets"]}
        with httpx.Client(base_url=again.url, timeout=60) as http:
            target["beforeIncident"] = budget_incident(http)
            preview = http.post("/api/emergency/backups/test-rollback", json=target)
            assert preview.status_code == 200, preview.text
            assert preview.json()["backupId"].startswith(snapshot[:8]), preview.json()
            assert run_json(workdir, "snapshots", "--json", "--tag", "ers-rollback") == []
            body = target | {"confirm": True, "reason": "after the incident"}
            rolled = http.post("/api/emergency/rollback", json=body)
        assert rolled.status_code == 200, rolled.text
        assert rolled.json()["backupId"].startswith(snapshot[:8]), (rolled.json(), aside.json())
        assert expenses(workdir) == []
        assert "had no record in the repository: written now" in again.log()
        records = run_json(workdir, "snapshots", "--json", "--tag", "ers-rollback")
        (late,) = [r for r in records if any(t.startswith("swapped-at:") for t in r["tags"])]
        assert f"restores:{swapped['detail']['backupId']}" in late["tags"], late
        assert "rolled-back:budgets" in late["tags"], late
        mark = mark_from_restic(late)  # at the swap's moment, not the late write's
        assert mark is not None and abs((mark.time - swap_time).total_seconds()) < 0.001, late
        assert len(records) == 2  # and the record of the rollback just done
    finally:
        assert again.stop() == 0
