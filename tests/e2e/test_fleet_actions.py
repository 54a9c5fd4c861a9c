"""Two real ERS replicas (uvicorn processes) on one PostgreSQL database and one restic
repository: a critical incident seen by both runs its emergency backup once for the fleet."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ErsProcess, backed_up_fleet, tagged_snapshots


def fatal_span_export(service: str, trace_id: str, message: str) -> dict[str, Any]:
    """An OTLP/JSON export of one failing span of ``service``."""
    now = time.time_ns()
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": secrets.token_hex(8),
                                "name": "charge",
                                "kind": 2,
                                "startTimeUnixNano": str(now - 5_000_000),
                                "endTimeUnixNano": str(now),
                                "status": {"code": 2, "message": message},
                                "events": [
                                    {
                                        "name": "exception",
                                        "timeUnixNano": str(now),
                                        "attributes": [
                                            {
                                                "key": "exception.type",
                                                "value": {"stringValue": "RuntimeError"},
                                            },
                                            {
                                                "key": "exception.message",
                                                "value": {"stringValue": message},
                                            },
                                        ],
                                    }
                                ],
                            }
                        ]
                    }
                ],
            }
        ]
    }


def send(replica: ErsProcess, export: dict[str, Any]) -> None:
    reply = httpx.post(f"{replica.url}/v1/traces", json=export, timeout=10)
    assert reply.status_code == 200, reply.text


def emergency_snapshots(repository: Path, password_file: Path) -> list[dict[str, Any]]:
    return tagged_snapshots(repository, password_file, "reason:emergency")


def backup_entries(replica: ErsProcess, incident_id: str) -> list[dict[str, Any]]:
    reply = httpx.get(f"{replica.url}/api/emergency/incidents/{incident_id}", timeout=10)
    assert reply.status_code == 200, reply.text
    return [
        entry
        for entry in reply.json()["timeline"]
        if entry["kind"] in ("action_finished", "action_skipped")
        and (entry.get("data") or {}).get("action") == "emergency_backup"
    ]


def test_a_critical_incident_seen_by_two_replicas_takes_one_emergency_backup(
    tmp_path: Path, pg_url: str
) -> None:
    repository, password_file = tmp_path / "repo", tmp_path / "restic-password"
    with backed_up_fleet(tmp_path, pg_url) as replicas:
        # The same failure reaches both replicas (their collectors each forward it).
        for replica in replicas:
            send(replica, fatal_span_export("payments", secrets.token_hex(16), "fatal: ledger"))

        deadline = time.monotonic() + 60
        while True:
            found = httpx.get(
                f"{replicas[0].url}/api/emergency/incidents", params={"component": "payments"}
            ).json()["incidents"]
            entries = backup_entries(replicas[0], found[0]["id"]) if found else []
            if len(entries) >= 2:
                break
            assert time.monotonic() < deadline, (
                f"incidents {found}, backup entries {entries}, logs:\n"
                + "\n".join(r.log()[-3000:] for r in replicas)
            )
            time.sleep(0.2)
        (incident,) = found
        assert incident["response"]["protocol"] == "CRITICAL_SYSTEM_FAILURE"
        assert incident["count"] == 2
        assert sorted(e["data"]["result"] for e in entries) == ["skipped", "success"]
        skipped = next(e for e in entries if e["kind"] == "action_skipped")
        assert "took emergency_backup for this incident" in skipped["message"]

        snapshots = emergency_snapshots(repository, password_file)
        components = sorted(t for s in snapshots for t in s["tags"] if t.startswith("component:"))
        # One emergency backup: one snapshot of each component, not two.
        assert components == [
            "component:budgets",
            "component:conversations",
            "component:incidents",
            "component:profiles",
            "component:system_state",
        ], snapshots
    for replica in replicas:
        assert "Traceback" not in replica.log(), replica.log()[-3000:]


def backup_alert(fingerprint: str) -> dict[str, Any]:
    labels = {"alertname": "EmergencyBackupNeeded", "severity": "critical", "action": "backup"}
    alert = {
        "status": "firing",
        "labels": labels,
        "annotations": {"summary": "state at risk"},
        "startsAt": "2026-12-03T12:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": fingerprint,
    }
    return {
        "version": "4",
        "groupKey": '{}:{alertname="EmergencyBackupNeeded"}',
        "status": "firing",
        "receiver": "ers-backup",
        "alerts": [alert],
    }


def backup_outcomes(replica: ErsProcess, count: int) -> tuple[str, list[str]]:
    """The alert's incident and the results of its emergency backups, once there are
    ``count`` of them."""
    deadline = time.monotonic() + 60
    while True:
        found = httpx.get(
            f"{replica.url}/api/emergency/incidents", params={"component": "ers"}, timeout=10
        ).json()["incidents"]
        entries = backup_entries(replica, found[0]["id"]) if found else []
        if len(entries) >= count:
            return found[0]["id"], [e["message"] for e in entries]
        assert time.monotonic() < deadline, (entries, replica.log()[-3000:])
        time.sleep(0.2)


def test_an_emergency_backup_that_failed_on_one_replica_is_taken_by_the_next_delivery(
    tmp_path: Path, pg_url: str
) -> None:
    """A failure holds nothing back: the replica whose emergency backup failed gives its
    claim back, so the alert's next delivery, to the other replica, takes the backup instead
    of being told that the first replica took it."""
    repository, password_file = tmp_path / "repo", tmp_path / "restic-password"
    with backed_up_fleet(tmp_path, pg_url) as replicas:
        a, b = replicas

        repository.rename(tmp_path / "repo-away")  # out of reach: the backup fails
        reply = httpx.post(f"{a.url}/api/emergency/alerts", json=backup_alert("bk01"), timeout=10)
        assert reply.json()["new"] == 1, reply.text
        _, outcomes = backup_outcomes(a, 1)
        assert outcomes[0].startswith("emergency_backup: failed"), outcomes

        (tmp_path / "repo-away").rename(repository)
        # Alertmanager's next repeat of the firing alert reaches the other replica.
        reply = httpx.post(f"{b.url}/api/emergency/alerts", json=backup_alert("bk01"), timeout=10)
        assert reply.json()["new"] == 1, reply.text
        _, outcomes = backup_outcomes(b, 2)
        assert outcomes[1].startswith("emergency_backup: success"), outcomes
        assert emergency_snapshots(repository, password_file)


def finished_backup(replica: ErsProcess, component: str) -> dict[str, Any]:
    """The emergency-backup entry of ``component``'s incident, once it is there."""
    deadline = time.monotonic() + 60
    while True:
        found = httpx.get(
            f"{replica.url}/api/emergency/incidents", params={"component": component}, timeout=10
        ).json()["incidents"]
        entries = backup_entries(replica, found[0]["id"]) if found else []
        if entries:
            return entries[0]
        assert time.monotonic() < deadline, replica.log()[-3000:]
        time.sleep(0.2)


def test_an_emergency_backup_on_one_replica_covers_the_others_within_its_cooldown(
    tmp_path: Path, pg_url: str
) -> None:
    """Two critical incidents, one on each replica, a few seconds apart: the second replica
    takes no snapshot of its own, and its timeline names the first one's backup."""
    repository, password_file = tmp_path / "repo", tmp_path / "restic-password"
    with backed_up_fleet(tmp_path, pg_url) as replicas:
        a, b = replicas

        send(a, fatal_span_export("billing", secrets.token_hex(16), "fatal: ledger"))
        first = finished_backup(a, "billing")
        assert first["message"].startswith("emergency_backup: success"), first
        send(b, fatal_span_export("shipping", secrets.token_hex(16), "fatal: queue"))
        second = finished_backup(b, "shipping")
        assert second["data"]["result"] == "skipped", second
        assert "within the cooldown" in second["message"], second

        snapshots = emergency_snapshots(repository, password_file)
        assert len(snapshots) == 5, snapshots  # one of each component, once


def test_a_rollback_on_one_replica_ends_the_emergency_backup_cooldown_of_the_other(
    tmp_path: Path, pg_url: str
) -> None:
    """Before: replica b answered a critical incident after a rollback on a with the
    emergency snapshot taken before it, which holds the state the rollback put aside."""
    repository, password_file = tmp_path / "repo", tmp_path / "restic-password"
    with backed_up_fleet(tmp_path, pg_url) as replicas:
        a, b = replicas
        send(b, fatal_span_export("billing", secrets.token_hex(16), "fatal: ledger"))
        first = finished_backup(b, "billing")
        assert first["message"].startswith("emergency_backup: success"), first
        (budgets,) = [
            s
            for s in emergency_snapshots(repository, password_file)
            if "component:budgets" in s["tags"]
        ]
        body = {
            "backupId": budgets["id"],
            "components": ["budgets"],
            "confirm": True,
            "reason": "r",
        }
        rolled = httpx.post(f"{a.url}/api/emergency/rollback", json=body, timeout=120)
        assert rolled.status_code == 200, rolled.text

        send(b, fatal_span_export("shipping", secrets.token_hex(16), "fatal: queue"))
        second = finished_backup(b, "shipping")
        assert second["message"].startswith("emergency_backup: success"), second
        assert len(emergency_snapshots(repository, password_file)) == 10
