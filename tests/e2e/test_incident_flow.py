"""simulate-error on an agent → chats degrade → one incident with the right classification,
the protocol's actions on its timeline, and trace ids whose traces come back with the failing
agent span in them. Over real uvicorn, with the CLI reading it back."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import start_ers


async def concurrent_chats(url: str, count: int) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        replies = await asyncio.gather(
            *(
                client.post("/chat", json={"message": "budget report", "userId": f"u{i}"})
                for i in range(count)
            )
        )
    return [reply.json() for reply in replies]


def wait_for(fetch, predicate, timeout_s: float = 10.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout_s
    while True:
        value = fetch()
        if predicate(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_simulated_database_failure_becomes_one_incident_with_actions(tmp_path: Path) -> None:
    ers = start_ers(tmp_path)
    try:
        with httpx.Client(base_url=ers.url, timeout=10) as http:
            injected = http.post(
                "/api/emergency/simulate-error",
                json={
                    "errorType": "database",
                    "severity": "high",
                    "component": "BMA",
                    "message": "Database connection timeout",
                },
            )
            assert injected.status_code == 200
            replies = asyncio.run(concurrent_chats(ers.url, 6))
            assert all(r["emergency"] for r in replies)

            listing = wait_for(
                lambda: http.get("/api/emergency/incidents?component=budget").json(),
                # Concurrent calls fail before the responder isolates the agent; all of them
                # group into one incident once the pipeline's worker has written them.
                lambda body: body["total"] >= 1 and body["incidents"][0]["count"] >= 2,
            )
            assert listing["total"] == 1  # one incident, not one per failure
            incident = listing["incidents"][0]
            assert incident["classification"]["severity"] == "high"
            assert incident["classification"]["type"] == "database"
            assert incident["classification"]["recoverable"] is True
            assert incident["response"]["protocol"] == "SERVICE_DEGRADATION"
            assert incident["count"] >= 2

            detail = wait_for(
                lambda: http.get(f"/api/emergency/incidents/{incident['id']}").json(),
                # Marked mitigated once the protocol's actions have all finished.
                lambda body: (
                    sum(e["kind"] == "action_finished" for e in body["timeline"]) >= 2
                    and body["status"] != "open"
                ),
            )
            finished = [e["message"] for e in detail["timeline"] if e["kind"] == "action_finished"]
            assert any(m.startswith("isolate: success") for m in finished), finished
            assert any(m.startswith("serve_cached: success") for m in finished), finished
            assert detail["status"] == "mitigated"
            breaker = http.get("/api/emergency/circuit-breakers/budget").json()
            assert breaker["state"] == "forced_open" and breaker["forced"]["source"] == "responder"

            later = http.post("/chat", json={"message": "budget report", "userId": "late"}).json()
            assert later["incident"] == incident["id"]
            assert {"action": "isolate", "result": "success"} in later["recovery"]["actions"]
            assert later["systemState"] in ("degraded", "emergency")

            trace_id = detail["traceIds"][0]
            trace = http.get(f"/api/emergency/traces/{trace_id}").json()
            names = json.dumps(trace["spans"])
            assert "agent.budget" in names and '"code": "ERROR"' in names
            assert http.get(f"/api/emergency/traces/{'0' * 32}").status_code == 404

            metrics = http.get("/metrics").text
            assert 'ers_incidents_total{component="budget",severity="high",type="database"}' in (
                metrics
            )
            assert 'ers_protocol_actions_total{action="isolate"' in metrics

        def ers_cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "service.cli", *args, "--url", ers.url],
                capture_output=True,
                text=True,
                timeout=60,
            )

        shown = ers_cli("incidents", "show", incident["id"])
        assert shown.returncode == 0, shown.stderr
        assert "action_finished" in shown.stdout and incident["id"] in shown.stdout
        drawn = ers_cli("trace", trace_id)
        assert drawn.returncode == 0 and "✗ agent.budget" in drawn.stdout
        resolved = ers_cli("incidents", "resolve", incident["id"], "--resolution", "db back")
        assert resolved.returncode == 0 and "resolved" in resolved.stdout
        # Its cause is fixed: the agent the responder isolated for it takes trial calls again.
        assert "released the isolation of budget" in resolved.stdout, resolved.stdout
        breaker = httpx.get(f"{ers.url}/api/emergency/circuit-breakers/budget", timeout=10).json()
        assert breaker["state"] == "half_open", breaker
        again = ers_cli("incidents", "resolve", incident["id"], "--resolution", "twice")
        assert again.returncode == 4 and "409" in again.stderr
    finally:
        assert ers.stop() == 0
