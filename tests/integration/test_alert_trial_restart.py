"""An ``isolate`` alert that resolves while its agent still fails leaves the incident
mitigated for a trial of the released breaker to resolve. A restart drops the released
breaker (it comes back closed) and the watch on its trial: the next start asks the agent
again, as a resolution that finds its breaker closed does, and resolves the incident when it
answers, instead of leaving a critical incident, health at 503, until its quiet period."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ErsProcess, start_ers
from tests.e2e.test_fleet_overrides import TOKEN, alert_payload

ENV = {"ERS_ALERT_TOKEN": TOKEN, "ERS_AUTO_RESPONSE_ENABLED": "false"}
FINGERPRINT = alert_payload("firing")["alerts"][0]["fingerprint"]


def deliver(ers: ErsProcess, status: str) -> None:
    sent = httpx.post(
        f"{ers.url}/api/emergency/alerts",
        json=alert_payload(status),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert sent.status_code == 200 and sent.json()["new"] == 1, sent.text


def outcome(workdir: Path, status: str) -> str | None:
    with sqlite3.connect(workdir / "data" / "incidents.sqlite3", timeout=5) as db:
        row = db.execute(
            "SELECT outcome FROM alert_ledger WHERE fingerprint = ? AND status = ?",
            (FINGERPRINT, status),
        ).fetchone()
    return None if row is None or row[0] is None else str(row[0])


def acted_on(workdir: Path, status: str) -> str:
    deadline = time.monotonic() + 20
    while (done := outcome(workdir, status)) is None:
        assert time.monotonic() < deadline, f"the {status} alert was never acted on"
        time.sleep(0.05)
    return done


def workout_incident(ers: ErsProcess) -> dict[str, Any]:
    incidents = httpx.get(
        f"{ers.url}/api/emergency/incidents", params={"component": "workout"}, timeout=10
    ).json()["incidents"]
    assert len(incidents) == 1, incidents
    return dict(incidents[0])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_an_incident_left_to_a_trial_is_resolved_once_the_agent_answers_after_a_restart(
    tmp_path: Path, sig: signal.Signals
) -> None:
    workdir = tmp_path / "ers"
    ers = start_ers(workdir, env=ENV)
    try:
        deliver(ers, "firing")
        assert acted_on(workdir, "firing").startswith("isolate: success")
        fault = httpx.post(
            f"{ers.url}/api/emergency/simulate-error",
            json={"errorType": "network", "component": "workout", "message": "refused"},
            timeout=10,
        )
        assert fault.status_code == 200, fault.text
        deliver(ers, "resolved")
        assert acted_on(workdir, "resolved").endswith("incident mitigated")
        assert workout_incident(ers)["status"] == "mitigated"
    finally:
        ers.stop(sig)

    # The injected fault lived in the process: the agent answers now.
    again = start_ers(workdir, env=ENV)
    try:
        deadline = time.monotonic() + 20
        while (incident := workout_incident(again))["status"] != "resolved":
            assert time.monotonic() < deadline, f"the incident stayed {incident['status']}"
            time.sleep(0.1)
        shown = httpx.get(f"{again.url}/api/emergency/incidents/{incident['id']}", timeout=10)
        last = shown.json()["timeline"][-1]
        assert last["who"] == "alertmanager", last
        assert "ERS restarted before a trial of workout decided" in last["message"], last
        assert "its health probe passed" in last["message"], last
        breaker = httpx.get(f"{again.url}/api/emergency/circuit-breakers/workout", timeout=10)
        assert breaker.json()["state"] == "closed"
    finally:
        again.stop()
    assert "Traceback" not in again.log(), again.log()[-3000:]
