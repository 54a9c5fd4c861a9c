"""Alertmanager's deliveries as they really arrive at a running ``ers serve`` (uvicorn, over
HTTP): late, repeated, or around a crash. What ERS did with each is read back from the
service's API and from its alert ledger on disk, as an operator would."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ErsProcess, fail_the_budget_agent_once, start_ers

TOKEN = "alert-delivery-token-41b7"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STARTS_AT = "2026-12-03T12:00:00.000Z"


def payload(status: str, name: str, fingerprint: str, **labels: str) -> dict[str, Any]:
    all_labels = {"alertname": name, "severity": "critical", **labels}
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{name}"}}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "ers-isolate",
        "groupLabels": {"alertname": name},
        "commonLabels": all_labels,
        "commonAnnotations": {"summary": f"{name} for the test"},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [
            {
                "status": status,
                "labels": all_labels,
                "annotations": {"summary": f"{name} for the test"},
                "startsAt": STARTS_AT,
                "endsAt": "2026-12-03T12:10:00.000Z"
                if status == "resolved"
                else "0001-01-01T00:00:00Z",
                "generatorURL": "http://127.0.0.1:9090/graph",
                "fingerprint": fingerprint,
            }
        ],
    }


def ledger(workdir: Path, fingerprint: str, status: str) -> sqlite3.Row | None:
    """The ledger's row of one delivery, read from the incidents file as another reader."""
    with sqlite3.connect(workdir / "data" / "incidents.sqlite3") as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(
            "SELECT deliveries, incident_id, outcome FROM alert_ledger"
            " WHERE fingerprint = ? AND status = ?",
            (fingerprint, status),
        ).fetchone()


def handled(workdir: Path, fingerprint: str, status: str, timeout: float = 20) -> sqlite3.Row:
    """The ledger's row once ERS has finished with the delivery (its outcome is written)."""
    deadline = time.monotonic() + timeout
    while True:
        row = ledger(workdir, fingerprint, status)
        if row is not None and row["outcome"] is not None:
            return row
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{status} {fingerprint} not handled in {timeout:g} s: {row}")
        time.sleep(0.1)


def post(ers: ErsProcess, body: dict[str, Any]) -> dict[str, Any]:
    reply = httpx.post(f"{ers.url}/api/emergency/alerts", json=body, headers=AUTH, timeout=10)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def breaker(ers: ErsProcess, agent: str) -> dict[str, Any]:
    reply = httpx.get(f"{ers.url}/api/emergency/circuit-breakers/{agent}", timeout=10)
    return dict(reply.json())


def incidents(ers: ErsProcess) -> list[dict[str, Any]]:
    reply = httpx.get(f"{ers.url}/api/emergency/incidents?limit=100", timeout=10)
    return list(reply.json()["incidents"])


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "alert.token").write_text(TOKEN)
    return tmp_path / "ers"


def serve(workdir: Path, **env: str) -> ErsProcess:
    return start_ers(
        workdir, env={"ERS_ALERT_TOKEN_FILE": str(workdir.parent / "alert.token"), **env}
    )


@pytest.fixture
def ers(workdir: Path) -> Iterator[ErsProcess]:
    process = serve(workdir)
    try:
        yield process
    finally:
        process.stop()


def test_a_firing_delivered_after_its_resolution_changes_nothing(
    ers: ErsProcess, workdir: Path
) -> None:
    isolate = {"action": "isolate", "agent": "nutrition"}
    resolved = post(ers, payload("resolved", "AgentErrorRatioHigh", "0ff0a1", **isolate))
    assert resolved == {"received": 1, "new": 1, "duplicates": 0}
    handled(workdir, "0ff0a1", "resolved")

    late = post(ers, payload("firing", "AgentErrorRatioHigh", "0ff0a1", **isolate))
    assert late == {"received": 1, "new": 1, "duplicates": 0}
    row = handled(workdir, "0ff0a1", "firing")
    assert row["outcome"].startswith("stale"), row["outcome"]
    assert breaker(ers, "nutrition")["state"] == "closed"
    assert incidents(ers) == []
    # The same late firing again is a duplicate, and still changes nothing.
    again = post(ers, payload("firing", "AgentErrorRatioHigh", "0ff0a1", **isolate))
    assert again == {"received": 1, "new": 0, "duplicates": 1}
    assert breaker(ers, "nutrition")["state"] == "closed"


def test_an_action_cut_short_by_kill_9_runs_on_the_next_delivery(workdir: Path) -> None:
    """Alertmanager got its 200 before the action ran; the process died mid-action. The
    alert's next delivery (Alertmanager repeats a firing alert) must act, not be dropped
    as a duplicate."""
    workdir.mkdir(parents=True)
    (workdir / "restic-password").write_text("alert-delivery-restic\n")
    backup_alert = payload("firing", "CriticalIncidentActive", "c0ffee01", action="backup")
    ers = serve(workdir, ERS_BACKUPS_ENABLED="true")
    try:
        ers.wait_for_backups()
        assert post(ers, backup_alert)["new"] == 1
        ers.process.kill()  # SIGKILL: no drain, no outcome written
        ers.process.wait(timeout=10)
    finally:
        ers.stop()
    cut = ledger(workdir, "c0ffee01", "firing")
    assert cut is not None and cut["outcome"] is None, "the action finished before the kill"

    ers = serve(workdir, ERS_BACKUPS_ENABLED="true")
    try:
        ers.wait_for_backups()
        assert "lost" in ledger(workdir, "c0ffee01", "firing")["outcome"]  # type: ignore[index]
        assert post(ers, backup_alert) == {"received": 1, "new": 1, "duplicates": 0}
        row = handled(workdir, "c0ffee01", "firing", timeout=60)
        assert row["outcome"] == "emergency_backup: success", row["outcome"]
        backups = httpx.get(f"{ers.url}/api/emergency/backups", timeout=10).json()["backups"]
        assert [b["reason"] for b in backups].count("emergency") == 1, backups
        # Done once: a further repeat of the same alert is a duplicate again.
        assert post(ers, backup_alert)["duplicates"] == 1
    finally:
        ers.stop()


def test_an_alert_whose_action_already_ran_for_the_incident_says_so_on_its_timeline(
    workdir: Path,
) -> None:
    """CriticalIncidentActive fires again for the same incident (Prometheus lost the series
    for a scrape, an ERS restart): the emergency backup ran minutes ago and is not run again,
    and the incident's timeline says so instead of showing the alert with nothing done."""
    # With backups (real restic): an action that is not set up holds nothing off.
    workdir.mkdir(exist_ok=True)
    (workdir / "restic-password").write_text("alert-delivery-password\n")
    ers = serve(workdir, ERS_AUTO_RESPONSE_ENABLED="false", ERS_BACKUPS_ENABLED="true")
    try:
        ers.wait_for_backups()
        http = httpx.Client(base_url=ers.url, timeout=10)
        fail_the_budget_agent_once(http)
        deadline = time.monotonic() + 20
        while not (found := incidents(ers)):
            assert time.monotonic() < deadline, "no incident"
            time.sleep(0.1)
        (incident,) = found
        first = payload("firing", "CriticalIncidentActive", "1a2b", action="backup")
        post(ers, first)
        assert handled(workdir, "1a2b", "firing")["incident_id"] == incident["id"]
        assert ledger_rows(workdir, "1a2b") == ["emergency_backup: success"]
        again = payload("firing", "CriticalIncidentActive", "1a2b", action="backup")
        again["alerts"][0]["startsAt"] = "2026-12-03T12:05:00.000Z"
        assert post(ers, again)["new"] == 1
        deadline = time.monotonic() + 20
        while len(rows := ledger_rows(workdir, "1a2b")) < 2 or rows[-1] is None:
            assert time.monotonic() < deadline, rows
            time.sleep(0.1)
        assert rows[-1] == "emergency_backup: skipped"
        timeline = http.get(f"/api/emergency/incidents/{incident['id']}").json()["timeline"]
        notes = [e["message"] for e in timeline if e["kind"] == "note"]
        assert any(
            n.startswith("emergency_backup: skipped — already tried for this") for n in notes
        ), [(e["kind"], e["message"]) for e in timeline]
        http.close()
    finally:
        ers.stop()


def ledger_rows(workdir: Path, fingerprint: str) -> list[str | None]:
    """The outcomes of a fingerprint's firings, oldest first."""
    with sqlite3.connect(workdir / "data" / "incidents.sqlite3") as conn:
        return [
            row[0]
            for row in conn.execute(
                "SELECT outcome FROM alert_ledger WHERE fingerprint = ? AND status = 'firing'"
                " ORDER BY starts_at",
                (fingerprint,),
            )
        ]


def test_the_resolution_of_an_isolate_alert_for_no_agent_resolves_its_incident(
    ers: ErsProcess, workdir: Path
) -> None:
    """The alert names an agent this service does not have (renamed, or removed from
    ``agents:``): nothing could be isolated, and no trial call will come, so its resolution
    resolves the incident it opened instead of leaving it mitigated, and active."""
    isolate = {"action": "isolate", "agent": "coach"}
    post(ers, payload("firing", "AgentErrorRatioHigh", "c0ac1", **isolate))
    opened = handled(workdir, "c0ac1", "firing")
    assert opened["outcome"] == "isolate: skipped", opened["outcome"]
    post(ers, payload("resolved", "AgentErrorRatioHigh", "c0ac1", **isolate))
    handled(workdir, "c0ac1", "resolved")
    (incident,) = incidents(ers)
    assert (incident["id"], incident["status"]) == (opened["incident_id"], "resolved")
    status = httpx.get(f"{ers.url}/api/emergency/status", timeout=10).json()
    assert status["activeIncidents"] == 0, status


def test_a_memory_alert_reaching_a_replica_with_memory_to_spare_trims_nothing(
    ers: ErsProcess, workdir: Path
) -> None:
    """MemoryCritical reaches whichever replica the load balancer picks: this one uses a
    sliver of its limit, so its cleanup is skipped and says why, instead of reporting a
    trim that freed nothing where the memory is short."""
    cleanup = {"action": "cleanup", "family": "memory", "instance": "ers-2:8000"}
    post(ers, payload("firing", "MemoryCritical", "3e3e", **cleanup))
    row = handled(workdir, "3e3e", "firing")
    assert row["outcome"] == "trim_caches: skipped", row["outcome"]
    timeline = httpx.get(
        f"{ers.url}/api/emergency/incidents/{row['incident_id']}", timeout=10
    ).json()["timeline"]
    notes = [(e["kind"], e["message"]) for e in timeline]
    assert any(
        n.startswith("trim_caches: skipped — memory here is at ") and "under the 80% line" in n
        for kind, n in notes
        if kind == "action_skipped"
    ), notes
