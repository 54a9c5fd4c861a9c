"""A ``rollback`` alert whose rollback replaced the state, but whose process was killed
(``kill -9``) before the ledger said so, is not rolled back again by the alert's next
delivery: that second rollback would drop the writes acknowledged since the first. Real
``ers serve``, real restic behind a wrapper whose ``restore`` is slow; the incident store is
held by a writer of the test so that the kill lands after the swap, before the outcome."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from backup.workspace import SWAP_JOURNAL_NAME
from tests.conftest import ErsProcess, start_ers
from tests.processes import slow_restic

pytestmark = pytest.mark.integration

TOKEN = "rollback-alert-token-3b9f"
LABELS = {
    "alertname": "CriticalIncidentUnresolved",
    "action": "rollback",
    "about": "incidents",
    "severity": "critical",
}


def payload() -> dict[str, Any]:
    alert = {
        "status": "firing",
        "labels": LABELS,
        "annotations": {"summary": "a critical incident is open"},
        "startsAt": "2026-12-04T05:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": "ff00ee11dd22cc33",
    }
    return {
        "version": "4",
        "groupKey": '{}/{action="rollback"}:{alertname="CriticalIncidentUnresolved"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "ers-rollback",
        "groupLabels": {"alertname": "CriticalIncidentUnresolved"},
        "commonLabels": LABELS,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [alert],
    }


def deliver(http: httpx.Client) -> dict[str, Any]:
    sent = http.post(
        "/api/emergency/alerts", json=payload(), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert sent.status_code == 200, sent.text
    return dict(sent.json())


def expenses(workdir: Path) -> list[str]:
    with sqlite3.connect(workdir / "data" / "budgets.sqlite3") as db:
        return [str(row[0]) for row in db.execute("SELECT note FROM expenses")]


def spend(http: httpx.Client, words: str) -> None:
    reply = http.post("/chat", json={"message": words, "userId": "bob"})
    assert reply.status_code == 200 and "Recorded" in reply.json()["response"], reply.text


def critical_incident(http: httpx.Client) -> None:
    fault = {"component": "BMA", "errorType": "system"}
    assert http.post("/api/emergency/simulate-error", json=fault).status_code == 200
    for _ in range(50):  # at most about ten seconds
        http.post("/chat", json={"message": "budget report", "userId": "ann"})
        if http.get("/api/emergency/incidents", params={"severity": "critical"}).json()["total"]:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("no critical incident opened")
    assert http.delete("/api/emergency/simulate-error").status_code == 200


def start(workdir: Path, env: dict[str, str]) -> tuple[ErsProcess, httpx.Client]:
    ers = start_ers(workdir, env=env)
    ers.wait_for_backups()
    return ers, httpx.Client(base_url=ers.url, timeout=60)


def test_a_rollback_cut_off_by_a_kill_is_not_run_again_by_the_next_delivery(
    tmp_path: Path,
) -> None:
    restic = shutil.which("restic")
    assert restic is not None, "restic is not installed"
    wrapper = slow_restic(tmp_path, seconds=3)
    workdir = tmp_path / "ers"
    env = {
        "ERS_ALERT_TOKEN": TOKEN,
        "ERS_AUTO_RESPONSE_ENABLED": "false",
        "ERS_AUTO_ROLLBACK_ENABLED": "true",
        "ERS_BACKUPS_ENABLED": "true",
        "ERS_BACKUP_SCHEDULE_ENABLED": "false",
        "ERS_RESTIC_BINARY": str(wrapper),
    }
    ers, http = start(workdir, env)
    try:
        assert http.post("/api/emergency/backups/create", json={}).status_code == 200
        time.sleep(1.1)  # the incident first appears after the snapshot
        critical_incident(http)
        spend(http, "spent $25 on groceries")
        assert deliver(http)["new"] == 1
        time.sleep(1)  # restoring: its action and the ledger's first word are written
        holder = sqlite3.connect(
            workdir / "data" / "incidents.sqlite3", timeout=10, isolation_level=None
        )
        holder.execute("BEGIN IMMEDIATE")  # the outcome waits behind this writer
        journal = workdir / "data" / SWAP_JOURNAL_NAME
        for _ in range(100):  # at most ten seconds
            if not expenses(workdir) and not journal.exists():
                # Swapped and committed: the expense of before the snapshot is gone, and the
                # journal with it (a kill before the commit is undone at the next start).
                break
            time.sleep(0.1)
        assert not expenses(workdir), "the rollback did not swap"
        assert not journal.exists(), "the rollback's swap was not committed"
    finally:
        http.close()
        ers.stop(signal.SIGKILL)
    holder.execute("ROLLBACK")
    holder.close()

    again, http = start(workdir, env={**env, "ERS_RESTIC_BINARY": restic})
    try:
        spend(http, "spent $10 on groceries")  # acknowledged after the rollback
        assert deliver(http)["duplicates"] == 1
        time.sleep(2)
        assert expenses(workdir) == ["spent $10 on groceries"]
        with sqlite3.connect(workdir / "data" / "incidents.sqlite3") as db:
            (outcome,) = db.execute("SELECT outcome FROM alert_ledger").fetchone()
        assert "ERS stopped before it finished" in outcome, outcome
        # The trail and the incident's timeline say the rollback was cut off.
        (told,) = [
            entry
            for entry in http.get("/api/emergency/audit").json()["entries"]
            if entry["action"] == "rollback_interrupted"
        ]
        assert told["detail"]["startedBy"] == "alertmanager", told
        incident_id = told["detail"]["beforeIncident"]
        timeline = http.get(f"/api/emergency/incidents/{incident_id}").json()["timeline"]
        notes = [e["message"] for e in timeline if e["kind"] == "note"]
        assert any(note.startswith("rollback cut off: ") for note in notes), timeline
        assert f"to the snapshot before {incident_id}" in again.log()
    finally:
        http.close()
        assert again.stop() == 0
