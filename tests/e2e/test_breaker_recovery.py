"""A failing agent trips its breaker, chat keeps answering degraded, and it heals."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.conftest import start_ers


def test_failing_agent_trips_then_breaker_closes_after_healing(tmp_path: Path) -> None:
    # The breaker on its own: the responder would also isolate the agent on its incident.
    ers = start_ers(
        tmp_path, env={"ERS_BREAKER_OPEN_DURATION_S": "1", "ERS_AUTO_RESPONSE_ENABLED": "false"}
    )
    try:
        with httpx.Client(base_url=ers.url, timeout=10) as http:
            plan = {"message": "plan my meals", "userId": "u1"}
            assert http.post("/chat", json=plan).json()["emergency"] is False

            injected = http.post(
                "/api/emergency/simulate-error",
                json={"errorType": "database", "component": "NPA", "severity": "high"},
            )
            assert injected.status_code == 200, injected.text
            replies = [http.post("/chat", json=plan) for _ in range(4)]
            assert all(r.status_code == 200 for r in replies)
            bodies = [r.json() for r in replies]
            assert all(b["emergency"] is True and b["success"] is False for b in bodies)
            # The last good answer to the same user and intent is the fallback.
            assert "your last answer" in bodies[-1]["response"]
            breaker = http.get("/api/emergency/circuit-breakers").json()["breakers"]["nutrition"]
            assert breaker["state"] == "open"
            assert "Database connection timeout" in breaker["lastError"]
            # Other agents are untouched.
            other = http.post("/chat", json={"message": "budget report", "userId": "u1"})
            assert other.json()["emergency"] is False

            assert http.delete("/api/emergency/simulate-error").status_code == 200
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                body = http.post("/chat", json=plan).json()
                if not body["emergency"]:
                    break
                time.sleep(0.3)
            assert body["emergency"] is False and body["agent"] == "nutrition"
            state = http.get("/api/emergency/circuit-breakers/nutrition").json()
            assert state["state"] == "closed"
            transitions = [(e["from"], e["to"]) for e in state["history"]]
            assert ("closed", "open") in transitions
            assert ("open", "half_open") in transitions
            assert ("half_open", "closed") in transitions
    finally:
        assert ers.stop() == 0
