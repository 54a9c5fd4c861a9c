"""An incident the responder mitigated by itself (agent isolated, fallbacks answering) is
still acknowledged by the person on call, over real uvicorn and the CLI: it stays mitigated
and its timeline says who acknowledged it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import start_ers


def wait_for_status(http: httpx.Client, wanted: str, timeout_s: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        listing = http.get("/api/emergency/incidents", params={"component": "budget"}).json()
        if listing["incidents"] and listing["incidents"][0]["status"] == wanted:
            return listing["incidents"][0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {wanted} budget incident within {timeout_s:g} s: {listing}")
        time.sleep(0.2)


def test_an_auto_mitigated_incident_is_acknowledged_and_stays_mitigated(tmp_path: Path) -> None:
    ers = start_ers(tmp_path)
    try:
        with httpx.Client(base_url=ers.url, timeout=10) as http:
            injected = http.post(
                "/api/emergency/simulate-error", json={"errorType": "database", "component": "BMA"}
            )
            assert injected.status_code == 200
            for n in range(4):
                http.post("/chat", json={"message": "budget report", "userId": f"u{n}"})
            incident = wait_for_status(http, "mitigated")
            assert incident["acknowledgedAt"] is None

            acknowledged = subprocess.run(
                [sys.executable, "-m", "service.cli", "incidents", "acknowledge", incident["id"]]
                + ["--note", "on call, looking at the database", "--url", ers.url, "--json"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert acknowledged.returncode == 0, acknowledged.stderr

            detail = http.get(f"/api/emergency/incidents/{incident['id']}").json()
            assert detail["status"] == "mitigated"
            assert detail["acknowledgedAt"] is not None
            last = detail["timeline"][-1]
            assert last["kind"] == "note"
            assert last["who"] == "admin:loopback"
            assert last["message"] == (
                "acknowledged; stays mitigated: on call, looking at the database"
            )

            # For a person: the first line says it is done, and when.
            again = subprocess.run(
                [sys.executable, "-m", "service.cli", "incidents", "acknowledge", incident["id"]]
                + ["--url", ers.url],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert again.returncode == 0, again.stderr
            first = again.stdout.splitlines()[0]
            assert first.startswith(f"acknowledged {incident['id']} at 20"), again.stdout

            # Still active: the metric the incident alerts read counts it, so they keep
            # firing (and Alertmanager repeating) until it is resolved.
            severity = incident["classification"]["severity"]
            metrics = http.get("/metrics").text
            assert f'ers_incidents_active{{severity="{severity}"}} 1.0' in metrics
    finally:
        assert ers.stop() == 0


def test_the_help_of_acknowledge_says_what_it_does() -> None:
    """It said 'stops the repeat notifications', which nothing does: an acknowledged
    incident stays active, and the alerts on the active incidents keep firing."""
    shown = subprocess.run(
        [sys.executable, "-m", "service.cli", "incidents", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    words = " ".join(shown.stdout.split())
    assert "acknowledge a person is on it, on the timeline; it stays active" in words
    assert "stops the repeat notifications" not in words
