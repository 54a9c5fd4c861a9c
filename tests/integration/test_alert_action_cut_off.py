"""An alert's action that a ``kill -9`` cut off says so on its incident's timeline at the
next start. The ledger marks the attempt lost and its next delivery takes it again, but the
timeline kept ``action_started`` with nothing after it until then (up to Alertmanager's
``repeat_interval``), so an operator reading the incident saw a backup still
running that had died with the process. On PostgreSQL the start did not look at all. Real
``ers serve`` and restic, on SQLite and on PostgreSQL."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ErsProcess, start_ers
from tests.processes import slow_restic

pytestmark = pytest.mark.integration

TOKEN = "cut-off-alert-token-7c1d"
ENV = {
    "ERS_ALERT_TOKEN": TOKEN,
    "ERS_BACKUPS_ENABLED": "true",
    "ERS_BACKUP_SCHEDULE_ENABLED": "false",
}


def backup_alert() -> dict[str, Any]:
    labels = {"alertname": "CriticalIncidentActive", "action": "backup", "severity": "critical"}
    return {
        "version": "4",
        "groupKey": '{}/{action="backup"}:{alertname="CriticalIncidentActive"}',
        "status": "firing",
        "receiver": "ers-backup",
        "groupLabels": {"alertname": "CriticalIncidentActive"},
        "commonLabels": labels,
        "commonAnnotations": {"summary": "a critical incident is active"},
        "externalURL": "http://alertmanager:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {"summary": "a critical incident is active"},
                "startsAt": "2026-12-06T10:00:00.000Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": "c0ff1c2b3d4e5f60",
            }
        ],
    }


def timeline(ers: ErsProcess) -> list[dict[str, Any]]:
    """The timeline of the one incident the alert landed on; empty while none is listed (on
    PostgreSQL the list may come a moment after the alert's reply)."""
    listed = httpx.get(f"{ers.url}/api/emergency/incidents", timeout=10).json()["incidents"]
    assert len(listed) <= 1, listed
    if not listed:
        return []
    reply = httpx.get(f"{ers.url}/api/emergency/incidents/{listed[0]['id']}", timeout=10)
    return list(reply.json()["timeline"])


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "sqlite":
        return ENV
    return {**ENV, "ERS_DATABASE_URL": request.getfixturevalue("pg_url")}


def test_an_alerts_backup_cut_off_by_a_kill_9_is_noted_on_its_incident(
    tmp_path: Path, env: dict[str, str]
) -> None:
    workdir = tmp_path / "ers"
    slow = slow_restic(tmp_path, command="backup", seconds=120)
    ers = start_ers(workdir, env={**env, "ERS_RESTIC_BINARY": str(slow)})
    try:
        deadline = time.monotonic() + 60
        while httpx.get(f"{ers.url}/api/emergency/backups", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, ers.log()[-3000:]  # the repository opening
            time.sleep(0.1)
        reply = httpx.post(
            f"{ers.url}/api/emergency/alerts",
            json=backup_alert(),
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )
        assert reply.status_code == 200 and reply.json()["new"] == 1, reply.text
        deadline = time.monotonic() + 30
        while True:  # until the backup runs (its restic waits 120 s)
            started = [
                e
                for e in timeline(ers)
                if e["kind"] == "action_started" and e["data"].get("action") == "emergency_backup"
            ]
            if started:
                break
            assert time.monotonic() < deadline, ers.log()[-3000:]
            time.sleep(0.1)
    finally:
        ers.stop(signal.SIGKILL)

    again = start_ers(workdir, env=env)
    try:
        deadline = time.monotonic() + 30
        while not (entries := timeline(again)):
            assert time.monotonic() < deadline, again.log()[-3000:]
            time.sleep(0.1)
    finally:
        again.stop()
    notes = [e["message"] for e in entries if e["kind"] == "note"]
    assert any(
        "CriticalIncidentActive's action cut off: ERS stopped before it finished" in note
        for note in notes
    ), entries
    assert "1 alert(s) were being acted on when ERS stopped" in again.log()
