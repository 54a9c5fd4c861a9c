"""The shipped rules' backup and rollback alerts, through real Prometheus and Alertmanager,
acting on a real ``ers serve`` with a real restic repository: what ERS did shows where an
operator looks (``ers incidents show``, ``ers audit``, ``ers backup list``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_alert_loop import Loop


def ers(loop: Loop, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "--url", loop.ers.url, *args, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("ERS_")},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def loop(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Loop]:
    (tmp_path / "ers").mkdir()
    (tmp_path / "ers" / "restic-password").write_text("alert-actions-restic\n")
    started = Loop(tmp_path, {"ERS_BACKUPS_ENABLED": "true", "ERS_AUTO_ROLLBACK_ENABLED": "true"})
    failed_before = request.session.testsfailed
    try:
        yield started
        if request.session.testsfailed > failed_before:
            started.dump()
    finally:
        started.stop()


def test_a_critical_incident_gets_the_alerts_backup_and_rollback_and_the_audit_shows_it(
    loop: Loop,
) -> None:
    loop.wait_for(lambda: loop.prom.query('up{job="ers"} == 1'), timeout=20)
    loop.ers.wait_for_backups()
    before = loop.http.post("/api/emergency/backups/create", json={"reason": "before"})
    assert before.status_code == 200, before.text
    loop.http.post(
        "/api/emergency/simulate-error",
        json={"component": "budget", "errorType": "system", "count": 1},
    ).raise_for_status()
    loop.http.post("/chat", json={"message": "budget report", "userId": "t"})
    (incident,) = loop.wait_for(loop.incidents, timeout=30)

    # CriticalIncidentActive (action backup) and CriticalIncidentUnresolved (rollback) fire;
    # the auto response is off, so what happens is the alerts' doing.
    def rolled_back() -> list[dict[str, Any]]:
        entries = ers(loop, "audit")["entries"]
        return [e for e in entries if e["action"] == "rollback"]

    (entry,) = loop.wait_for(rolled_back, timeout=90)
    assert entry["actor"] == "alertmanager"
    assert entry["detail"]["beforeIncident"] == incident["id"]
    assert entry["detail"]["error"] is None
    assert before.json()["backupId"][:8] in entry["detail"]["result"]
    assert "CriticalIncidentUnresolved" in entry["detail"]["reason"]

    def finished(action: str) -> list[str]:
        timeline = ers(loop, "incidents", "show", incident["id"])["timeline"]
        return [
            e["message"]
            for e in timeline
            if e["kind"] == "action_finished"
            and e["data"].get("action") == action
            and e["who"] == "alertmanager"
        ]

    (backup_note,) = loop.wait_for(lambda: finished("emergency_backup"), timeout=30)
    assert "emergency_backup: success" in backup_note
    reasons = [b["reason"] for b in ers(loop, "backup", "list", "--refresh")["backups"]]
    assert "emergency" in reasons, reasons
    (rollback_note,) = finished("rollback")
    assert "rollback: success" in rollback_note
