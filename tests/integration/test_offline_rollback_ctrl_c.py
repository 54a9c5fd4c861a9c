"""Ctrl-C at a terminal once an offline rollback's swap is done, while its record is
written to the repository. Before: the terminal's SIGINT reached the restic writing the
record, which was lost (a later rollback "to before an incident" could then bring back the
state put aside); a second Ctrl-C exited 130 without a word, and the audit trail's rollback
had no outcome, read as cut off at the next start."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_backup_cli import offline_site
from tests.processes import slow_restic

pytestmark = pytest.mark.integration

RECORD_WRITE_S = 5  # how long the record's restic takes here: the stop waits up to 10 s


@pytest.mark.parametrize("presses", [1, 2], ids=["once", "twice"])
def test_ctrl_c_during_the_record_of_an_offline_rollback(tmp_path: Path, presses: int) -> None:
    env, budgets, snapshot = offline_site(tmp_path)
    with contextlib.closing(sqlite3.connect(budgets)) as db, db:
        db.execute("UPDATE budgets SET limit_cents = 1")
    marker = tmp_path / "writing-the-record"
    env["ERS_RESTIC_BINARY"] = str(slow_restic(tmp_path, "rollback.json", RECORD_WRITE_S, marker))
    rollback = ["backup", "--offline", "rollback", snapshot, "--reason", "r", "--yes", "--json"]
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", *rollback],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("ERS_")}, **env},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a terminal's foreground group, which Ctrl-C signals whole
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        for _ in range(600):
            if marker.exists() or process.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), "the rollback's record was never written"
        for _ in range(presses):
            os.killpg(process.pid, signal.SIGINT)
            time.sleep(0.3)
        out, err = process.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    assert process.returncode == 0, err
    told = json.loads(out)
    assert told["backupId"] == snapshot and told["safetyBackupId"], told
    with contextlib.closing(sqlite3.connect(budgets)) as db:
        assert db.execute("SELECT limit_cents FROM budgets").fetchall() == [(10000,)]
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "incidents.sqlite3")) as db:
        trail = db.execute("SELECT actor, action, detail FROM audit ORDER BY id").fetchall()
    assert [(actor, action) for actor, action, _ in trail][-3:] == [
        ("offline", "rollback_started"),
        ("offline", "rollback_swapped"),
        ("offline", "rollback"),
    ], trail
    assert json.loads(trail[-1][2])["error"] is None, trail[-1]

    records = subprocess.run(
        ["restic", "snapshots", "--json", "--no-lock", "--tag", "ers-rollback"],
        env={**os.environ, "RESTIC_REPOSITORY": env["ERS_RESTIC_REPOSITORY"]}
        | {"RESTIC_PASSWORD_FILE": env["ERS_RESTIC_PASSWORD_FILE"]},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    written = json.loads(records.stdout or "[]") or []
    if presses == 1:  # the stop waits for the record
        restores = [t for s in written for t in s["tags"] if t.startswith("restores:")]
        assert restores == [f"restores:{snapshot}"], written
        assert not any("not written" in note for note in told.get("restored", [])), told
    else:  # a second stop cuts it short: the rollback is done, and says what is missing
        assert written == [], written
        assert any("record in the repository was not written" in n for n in told["restored"])
