"""``ers status`` shows the system state and the health side by side: the health must not be
a report from before the state last changed."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.conftest import fail_the_budget_agent_once, start_ers


def test_status_health_is_not_older_than_the_state_it_is_shown_with(tmp_path: Path) -> None:
    # The default health interval (30 s): the periodic check will not come in time.
    ers = start_ers(tmp_path / "ers")
    try:
        http = httpx.Client(base_url=ers.url, timeout=10)
        assert http.get("/api/emergency/status").json()["health"]["overall"] == "healthy"
        fail_the_budget_agent_once(http)
        deadline = time.monotonic() + 20
        while (status := http.get("/api/emergency/status").json())["systemState"] != "emergency":
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert status["activeIncidents"] == 1
        full = http.get("/api/emergency/health")
        assert full.status_code == 503
        assert status["health"]["overall"] == full.json()["overall"] == "unhealthy", status
        http.close()
    finally:
        ers.stop()
