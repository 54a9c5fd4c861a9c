"""No round trip to the incident database runs on the event loop: with the state on a real
PostgreSQL server, every statement the service sends to the incident store and the alert
ledger (from the routes, the responder, alert handling, the system test and the state
machine's notes) is sent from a worker thread, so a slow or absent server holds up only the
requests that need it."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from service.settings import Settings
from service.stores.pg_pool import PgPool

TOKEN = "off-loop-alert-token-31c7"


@pytest.fixture
def settings(tmp_path: Path, pg_url: str) -> Settings:
    return Settings(
        env="test",
        data_dir=tmp_path / "data",
        restic_repository=str(tmp_path / "repo"),
        restic_password_file=tmp_path / "restic-password",
        database_url=pg_url,
        backups_enabled=False,
        alert_token=SecretStr(TOKEN),
    )


class Statements:
    """Where each of the sync pool's cursors was taken: on an event loop or off it."""

    def __init__(self) -> None:
        self.watching = False
        self.on_loop: list[str] = []
        self.off_loop = 0


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Statements:
    seen = Statements()
    original = PgPool.cursor

    def cursor(self: PgPool, *, transaction: bool = False) -> AbstractContextManager[Any]:
        if seen.watching:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                seen.off_loop += 1
            else:
                seen.on_loop.append(describe_caller())
        return original(self, transaction=transaction)

    monkeypatch.setattr(PgPool, "cursor", cursor)
    return seen


def describe_caller() -> str:
    frames = [f for f in traceback.extract_stack()[:-3] if "/service/" in f.filename]
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[-3:])


def alert(action: str) -> dict[str, Any]:
    labels = {"alertname": "AgentErrorRatioHigh", "agent": "workout", "action": action}
    return {
        "version": "4",
        "groupKey": "{}:{}",
        "status": "firing",
        "receiver": "ers",
        "groupLabels": {},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {"summary": "workout agent failing"},
                "startsAt": "2026-11-28T12:00:00.000Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": f"0ff100p{action}",
            }
        ],
    }


@pytest.fixture
def watching(statements: Statements) -> Iterator[Statements]:
    statements.watching = True
    yield statements
    statements.watching = False


async def test_every_incident_database_statement_is_sent_off_the_event_loop(
    app: FastAPI, client: httpx.AsyncClient, watching: Statements
) -> None:
    runtime = app.state.runtime
    fault = {"component": "budget", "errorType": "database"}
    assert (await client.post("/api/emergency/simulate-error", json=fault)).status_code == 200
    failed = await client.post("/chat", json={"message": "budget report", "userId": "u1"})
    assert failed.status_code == 200 and failed.json()["success"] is False, failed.text
    await runtime.incident_service.drain()  # the responder's actions and timeline notes

    listed = await client.get("/api/emergency/incidents", params={"component": "budget"})
    assert listed.status_code == 200, listed.text
    incident_id = listed.json()["incidents"][0]["id"]
    details = await client.get(f"/api/emergency/incidents/{incident_id}")
    assert details.status_code == 200 and details.json()["timeline"], details.text
    acknowledged = await client.post(
        f"/api/emergency/incidents/{incident_id}/acknowledge", json={"note": "looking"}
    )
    assert acknowledged.status_code == 200, acknowledged.text
    resolved = await client.post(
        f"/api/emergency/incidents/{incident_id}/resolve", json={"resolution": "fixed"}
    )
    assert resolved.status_code == 200, resolved.text
    summary = await client.get("/api/emergency/metrics")
    assert summary.status_code == 200, summary.text

    auth = {"Authorization": f"Bearer {TOKEN}"}
    for action in ("isolate", "teleport"):
        reply = await client.post("/api/emergency/alerts", json=alert(action), headers=auth)
        assert reply.status_code == 200 and reply.json()["new"] == 1, reply.text
    await runtime.alerts.drain()

    tested = await client.post("/api/emergency/test-system")
    assert tested.status_code == 200, tested.text
    steps = {s["step"]: s["passed"] for s in tested.json()["steps"]}
    assert steps["incident-pipeline"] is True, tested.text

    assert watching.on_loop == [], "statements sent from the event loop:\n" + "\n".join(
        watching.on_loop
    )
    assert watching.off_loop > 10  # the calls above did reach the database
