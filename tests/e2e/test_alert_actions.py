"""The shipped rules' backup and rollback alerts, through real Prometheus and Alertmanager,
acting on a real ``ers serve`` with a real restic repository: what ERS did shows where an
operator looks (``ers incidents show``, ``ers audit``, ``ers backup list``)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import fail_the_budget_agent_once, start_ers
from tests.e2e.test_alert_loop import TOKEN, Loop, fast_alertmanager, fast_rules
from tests.integration.prom import start_alertmanager, start_prometheus


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
def loop_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "ers").mkdir()
    (tmp_path / "ers" / "restic-password").write_text("alert-actions-restic\n")
    return {"ERS_BACKUPS_ENABLED": "true", "ERS_AUTO_ROLLBACK_ENABLED": "true"}


def test_a_critical_incident_gets_the_alerts_backup_and_rollback_and_the_audit_shows_it(
    loop: Loop,
) -> None:
    loop.wait_for(lambda: loop.prom.query('up{job="ers"} == 1'), timeout=20)
    loop.ers.wait_for_backups()
    before = loop.http.post("/api/emergency/backups/create", json={"reason": "before"})
    assert before.status_code == 200, before.text
    fail_the_budget_agent_once(loop.http)
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


def test_an_incident_alert_delivered_after_the_incidents_resolved_opens_nothing(
    tmp_path: Path,
) -> None:
    """Prometheus evaluates every 30 s here, and Alertmanager waits 8 s before it sends a
    backup alert: the operator resolves the critical incident in between, as happens with
    the shipped 15 s and 5 s. The late CriticalIncidentActive must not open a critical
    incident of its own, which would keep the alert firing."""
    token_file = tmp_path / "alert.token"
    token_file.write_text(TOKEN)
    ers_process = start_ers(
        tmp_path / "ers",
        env={"ERS_ALERT_TOKEN_FILE": str(token_file), "ERS_AUTO_RESPONSE_ENABLED": "false"},
    )
    am_config = yaml.safe_load(fast_alertmanager(ers_process.url, token_file))
    for route in am_config["route"]["routes"]:
        if route.get("receiver") in ("ers-backup", "ers-rollback"):
            route["group_wait"] = "8s"
    am = start_alertmanager(tmp_path / "am", yaml.safe_dump(am_config))
    prom = start_prometheus(
        tmp_path / "prom",
        [ers_process.url],
        [fast_rules(tmp_path)],
        scrape_interval="1s",
        evaluation_interval="30s",
        alertmanager_url=am.url,
    )
    http = httpx.Client(base_url=ers_process.url, timeout=10)
    try:
        fail_the_budget_agent_once(http)
        (incident,) = prom.wait_for(
            lambda: http.get("/api/emergency/incidents").json()["incidents"], timeout=20
        )

        def in_alertmanager() -> bool:
            return any(a["labels"]["alertname"] == "CriticalIncidentActive" for a in am.alerts())

        am.wait_for(in_alertmanager, timeout=60)
        resolved = http.post(
            f"/api/emergency/incidents/{incident['id']}/resolve", json={"resolution": "fixed"}
        )
        assert resolved.status_code == 200, resolved.text
        row = ledger_outcome(tmp_path / "ers", "CriticalIncidentActive", timeout=30)
        assert row.startswith("stale"), row
        incidents = http.get("/api/emergency/incidents").json()["incidents"]
        assert [(i["id"], i["status"]) for i in incidents] == [(incident["id"], "resolved")]
        status = http.get("/api/emergency/status").json()
        assert status["activeIncidents"] == 0
    finally:
        http.close()
        prom.stop()
        am.stop()
        ers_process.stop()


def ledger_outcome(workdir: Path, alertname: str, timeout: float) -> str:
    """The outcome of the first firing of ``alertname`` in the ledger, once written."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(workdir / "data" / "incidents.sqlite3") as conn:
            found = conn.execute(
                "SELECT outcome FROM alert_ledger WHERE alertname = ? AND status = 'firing'"
                " AND outcome IS NOT NULL",
                (alertname,),
            ).fetchone()
        if found:
            return str(found[0])
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no finished delivery of {alertname} in {timeout:g} s")
        time.sleep(0.2)
