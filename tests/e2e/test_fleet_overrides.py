"""Two real ERS replicas (uvicorn processes) on one PostgreSQL database: an Alertmanager
webhook delivered to replica A isolates the agent in replica B too, and the resolved alert
releases it in both."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ErsProcess, start_ers

TOKEN = "fleet-alert-token-7c1d"
AGENT = "workout"
DEADLINE_S = 5.0


def alert_payload(status: str) -> dict[str, Any]:
    labels = {
        "alertname": "AgentErrorRatioHigh",
        "agent": AGENT,
        "action": "isolate",
        "severity": "critical",
        "job": "ers",
    }
    return {
        "version": "4",
        "groupKey": '{}/{action="isolate"}:{alertname="AgentErrorRatioHigh", agent="workout"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "ers-isolate",
        "groupLabels": {"alertname": "AgentErrorRatioHigh", "agent": AGENT},
        "commonLabels": labels,
        "commonAnnotations": {"summary": "workout agent failing"},
        "externalURL": "http://alertmanager:9093",
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": {"summary": "workout agent failing"},
                "startsAt": "2026-11-28T12:00:00.000Z",
                "endsAt": "2026-11-28T12:10:00.000Z"
                if status == "resolved"
                else "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": "5e0f1c9a2b3d4e5f",
            }
        ],
    }


def state_of(replica: ErsProcess) -> str:
    reply = httpx.get(f"{replica.url}/api/emergency/circuit-breakers/{AGENT}", timeout=5)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["state"])


def wait_for_state(replicas: list[ErsProcess], wanted: set[str], what: str) -> float:
    """Seconds until every replica's breaker is in one of ``wanted``; bounded."""
    started = time.monotonic()
    while True:
        states = [state_of(replica) for replica in replicas]
        if all(state in wanted for state in states):
            return time.monotonic() - started
        if time.monotonic() - started > DEADLINE_S:
            raise AssertionError(f"{what}: breaker states {states} after {DEADLINE_S:g} s")
        time.sleep(0.05)


def post_alert(replica: ErsProcess, status: str) -> None:
    reply = httpx.post(
        f"{replica.url}/api/emergency/alerts",
        json=alert_payload(status),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text


def test_an_alert_to_one_replica_isolates_the_agent_in_both_and_its_resolution_releases_both(
    tmp_path: Path, pg_url: str
) -> None:
    env = {"ERS_DATABASE_URL": pg_url, "ERS_ALERT_TOKEN": TOKEN}
    replicas: list[ErsProcess] = []
    try:
        replicas.append(start_ers(tmp_path / "a", env=env))
        replicas.append(start_ers(tmp_path / "b", env=env))
        a, b = replicas
        assert state_of(a) == state_of(b) == "closed"

        post_alert(a, "firing")
        # Within 5 s of the delivery to a, both are forced open.
        wait_for_state([a, b], {"forced_open"}, "both replicas after the firing alert")
        forced = httpx.get(f"{b.url}/api/emergency/circuit-breakers/{AGENT}").json()["forced"]
        assert forced["source"] == "alertmanager"
        assert "AgentErrorRatioHigh" in forced["reason"] and "fleet override" in forced["reason"]

        post_alert(a, "resolved")
        # Released: half-open, so that trial calls decide whether the agent has healed.
        wait_for_state([a, b], {"half_open", "closed"}, "both replicas after the resolution")
    finally:
        for replica in replicas:
            replica.stop()
    for replica in replicas:
        assert "Traceback" not in replica.log(), replica.log()[-3000:]
