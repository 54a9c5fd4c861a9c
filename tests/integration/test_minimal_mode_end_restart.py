"""An operator who ends minimal response mode (``DELETE /api/emergency/minimal-mode``, or by
resolving the critical incident that turned it on) is answered once the end is saved: a
``kill -9`` right after the reply does not bring the mode back at the next start. Real
``ers serve`` over HTTP on SQLite."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import start_ers
from tests.integration.test_isolation_restart import kept_records

pytestmark = pytest.mark.integration


def in_minimal_mode(http: httpx.Client, workdir: Path) -> dict[str, Any]:
    """A critical failure of the budget agent: the responder turns minimal mode on for its
    incident; returns the mode once it is kept (bounded waits)."""
    fault = {"component": "BMA", "errorType": "system"}
    assert http.post("/api/emergency/simulate-error", json=fault).status_code == 200
    for _ in range(50):  # at most about ten seconds
        http.post("/chat", json={"message": "budget report", "userId": "ann"})
        mode = http.get("/api/emergency/status").json()["minimalMode"]
        if mode["active"]:
            break
        time.sleep(0.2)
    assert mode["active"] is True, mode
    assert http.delete("/api/emergency/simulate-error").status_code == 200
    for _ in range(50):
        if "minimal_mode" in kept_records(workdir):
            return dict(mode)
        time.sleep(0.1)
    raise AssertionError(f"minimal mode was not kept: {kept_records(workdir)}")


@pytest.mark.parametrize("how", ["delete", "resolve"])
def test_minimal_mode_ended_by_an_operator_stays_ended_after_a_kill_9(
    tmp_path: Path, how: str
) -> None:
    workdir = tmp_path / "ers"
    ers = start_ers(workdir)
    try:
        with httpx.Client(base_url=ers.url, timeout=10) as http:
            mode = in_minimal_mode(http, workdir)
            if how == "delete":
                reply = http.delete("/api/emergency/minimal-mode")
                assert reply.status_code == 200 and reply.json()["ended"] is True, reply.text
            else:
                reply = http.post(
                    f"/api/emergency/incidents/{mode['incident']}/resolve",
                    json={"resolution": "the budget store is fixed"},
                )
                assert reply.status_code == 200, reply.text
                assert reply.json()["minimalModeEnded"] is True, reply.text
            assert reply.json()["saved"] is True, reply.text
            # Saved when the reply came: no wait for the keeper here.
            assert "minimal_mode" not in kept_records(workdir)
    finally:
        ers.stop(signal.SIGKILL)

    again = start_ers(workdir)
    try:
        with httpx.Client(base_url=again.url, timeout=10) as http:
            after = http.get("/api/emergency/status").json()["minimalMode"]
            assert after["active"] is False, after
            chat = http.post("/chat", json={"message": "budget report", "userId": "ann"}).json()
            assert chat["recovery"] is None or chat["recovery"].get("fallback") != "minimal"
    finally:
        assert again.stop() == 0
