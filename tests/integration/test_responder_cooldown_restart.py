"""The responder's cooldown outlives the process: after ``ers serve`` is stopped (SIGTERM or
``kill -9``) and started again, the next failure of an incident whose protocol already ran
does not run it again within ``responder_cooldown_s`` — with automatic rollback on, a second
rollback to before the incident would drop the writes acknowledged since the first. Real
``ers serve`` and restic on SQLite."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ErsProcess, start_ers

pytestmark = pytest.mark.integration

ENV = {
    "ERS_AUTO_ROLLBACK_ENABLED": "true",
    "ERS_BACKUPS_ENABLED": "true",
    "ERS_BACKUP_SCHEDULE_ENABLED": "false",
}


def rollbacks_noted(http: httpx.Client, incident_id: str) -> list[str]:
    timeline = http.get(f"/api/emergency/incidents/{incident_id}").json()["timeline"]
    return [
        entry["message"]
        for entry in timeline
        if entry["kind"] == "action_finished" and entry["data"].get("action") == "rollback"
    ]


def critical_failure(http: httpx.Client) -> str:
    """A core failure of the budget agent, sent until its incident is open; its id."""
    fault = {"component": "BMA", "errorType": "system"}
    assert http.post("/api/emergency/simulate-error", json=fault).status_code == 200
    for _ in range(50):  # at most about ten seconds
        http.post("/chat", json={"message": "budget report", "userId": "ann"})
        found = http.get("/api/emergency/incidents", params={"severity": "critical"}).json()
        if found["incidents"]:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("no critical incident opened")
    assert http.delete("/api/emergency/simulate-error").status_code == 200
    return str(found["incidents"][0]["id"])


def start(workdir: Path) -> tuple[ErsProcess, httpx.Client]:
    ers = start_ers(workdir, env=ENV)
    ers.wait_for_backups()
    return ers, httpx.Client(base_url=ers.url, timeout=60)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_an_incidents_protocol_is_not_run_again_after_a_restart(
    tmp_path: Path, sig: signal.Signals
) -> None:
    workdir = tmp_path / "ers"
    ers, http = start(workdir)
    try:
        assert http.post("/api/emergency/backups/create", json={}).status_code == 200
        time.sleep(1.1)  # the incident first appears after the snapshot
        incident_id = critical_failure(http)
        for _ in range(300):  # the responder's backup and rollback: at most about a minute
            if rollbacks_noted(http, incident_id):
                break
            time.sleep(0.2)
        assert len(rollbacks_noted(http, incident_id)) == 1
    finally:
        http.close()
        ers.stop(sig)

    again, http = start(workdir)
    try:
        assert http.delete("/api/emergency/minimal-mode").status_code == 200
        spent = http.post("/chat", json={"message": "spent $10 on groceries", "userId": "bob"})
        assert spent.status_code == 200 and "Recorded" in spent.json()["response"], spent.text
        assert critical_failure(http) == incident_id  # the same incident fails again
        time.sleep(3)  # time for a response that should not come
        assert len(rollbacks_noted(http, incident_id)) == 1
        with sqlite3.connect(workdir / "data" / "budgets.sqlite3") as db:
            notes = [row[0] for row in db.execute("SELECT note FROM expenses")]
        assert notes == ["spent $10 on groceries"]
        assert http.get("/api/emergency/status").json()["minimalMode"]["active"] is False
    finally:
        http.close()
        assert again.stop() == 0
