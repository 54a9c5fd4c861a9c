"""With real uvicorn on SQLite: the incidents file (incidents, audit trail, alert ledger)
that cannot be written is met as on PostgreSQL when its server is gone: the incident routes
answer 503 naming the incident store, `ers` exits 5 saying so, and everything works again
once the file can be written."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ErsProcess, fail_the_budget_agent_once, start_ers


def make_immutable(files: list[Path], immutable: list[Path]) -> None:
    done = subprocess.run(["chattr", "+i", *map(str, files)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this filesystem cannot make files immutable: {done.stderr.strip()}")
    immutable.extend(files)


def make_mutable(immutable: list[Path]) -> None:
    subprocess.run(["chattr", "-i", *map(str, immutable)], check=True)
    immutable.clear()


def incidents_file(ers_dir: Path) -> list[Path]:
    """The file and its write-ahead log; the shared-memory index must stay writable."""
    path = ers_dir / "data" / "incidents.sqlite3"
    return [path, path.with_name(path.name + "-wal")]


def first_active_incident(http: httpx.Client) -> str:
    deadline = time.monotonic() + 20
    while not (found := http.get("/api/emergency/incidents?status=active").json()["incidents"]):
        assert time.monotonic() < deadline, "the failure opened no incident"
        time.sleep(0.2)
    return str(found[0]["id"])


@pytest.fixture
def ers(tmp_path: Path) -> Iterator[ErsProcess]:
    process = start_ers(tmp_path / "ers")
    yield process
    process.stop()


def test_an_unwritable_incidents_file_answers_503_naming_the_store_then_recovers(
    ers: ErsProcess, tmp_path: Path, immutable: list[Path]
) -> None:
    with httpx.Client(base_url=ers.url, timeout=10) as http:
        fail_the_budget_agent_once(http)
        incident = first_active_incident(http)
        make_immutable(incidents_file(tmp_path / "ers"), immutable)

        refused = http.post(f"/api/emergency/incidents/{incident}/acknowledge", json={})
        assert refused.status_code == 503, refused.text
        assert refused.json()["component"] == "incidents"
        assert "OperationalError" not in refused.text
        cli = subprocess.run(
            [sys.executable, "-m", "service.cli", "--url", ers.url]
            + ["incidents", "acknowledge", incident],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 5, cli.stderr
        assert "the incidents store cannot be used right now" in cli.stderr

        make_mutable(immutable)
        # The connection whose COMMIT failed is usable again, whichever thread it was on.
        for _ in range(4):
            done = http.post(f"/api/emergency/incidents/{incident}/acknowledge", json={})
            assert done.status_code == 200, done.text
        resolved = http.post(
            f"/api/emergency/incidents/{incident}/resolve", json={"resolution": "file fixed"}
        )
        assert resolved.status_code == 200, resolved.text
        assert resolved.json()["status"] == "resolved"
        # The refusals are the store's incident, in its own words, held until it could be
        # written: not a route's bare "HTTP 503".
        deadline = time.monotonic() + 15
        while not (
            mine := http.get("/api/emergency/incidents?component=incidents").json()["incidents"]
        ):
            assert time.monotonic() < deadline, "the store's outage opened no incident"
            time.sleep(0.2)
        assert all("HTTP 503" not in str(i) for i in mine), mine
        refusals = [i for i in mine if i["exceptionType"] == "IncidentStoreUnavailable"]
        assert refusals and refusals[0]["classification"]["type"] == "database", mine


def test_health_names_an_unwritable_incidents_file_and_recovers(
    ers: ErsProcess, tmp_path: Path, immutable: list[Path]
) -> None:
    with httpx.Client(base_url=ers.url, timeout=10) as http:
        assert (
            http.get("/api/emergency/health").json()["checks"]["stores"]["figures"]["incidents"]
            == "writable"
        )
        make_immutable(incidents_file(tmp_path / "ers"), immutable)

        reply = http.get("/api/emergency/health")
        assert reply.status_code == 503, reply.text
        stores = reply.json()["checks"]["stores"]
        assert stores["status"] == "unhealthy"
        assert stores["reason"] == "not writable: incidents"
        assert "incidents.sqlite3" in stores["figures"]["incidents"]
        assert stores["figures"]["budgets"] == "writable"
        status = http.get("/api/emergency/status").json()
        assert status["health"]["overall"] == "unhealthy"
        assert status["systemState"] == "degraded"
        assert status["stateReason"] == "failing subsystem: stores"

        make_mutable(immutable)
        reply = http.get("/api/emergency/health")
        assert reply.status_code == 200, reply.text
        assert reply.json()["checks"]["stores"]["figures"]["incidents"] == "writable"
