"""A rollback alert's `component` label names what it rolls back: that component alone, the
other components keeping every write made since; an alert naming something a rollback
cannot restore is refused, not taken for the whole state. Real restic over SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from service.settings import Settings
from tests.integration.conftest import asgi_client, backups_app
from tests.store_writes import turn_count

pytestmark = pytest.mark.integration

TOKEN = "component-rollback-token-5c1d"


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    alerts = {"auto_rollback_enabled": True, "auto_response_enabled": False}
    async with backups_app(settings, alert_token=SecretStr(TOKEN), **alerts) as application:
        yield application


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as c:
        yield c


async def deliver(http: httpx.AsyncClient, labels: dict[str, str]) -> None:
    """Delivers a firing rollback alert with ``labels`` besides its name and action."""
    name = "".join(labels.values()) + "Broken"
    labels = {"alertname": name, "action": "rollback", **labels}
    alert = {
        "status": "firing",
        "labels": labels | {"severity": "critical"},
        "annotations": {},
        "startsAt": "2026-12-07T05:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": f"{abs(hash(name)):016x}"[:16],
    }
    payload = {
        "version": "4",
        "groupKey": f"{{}}:{{alertname={name}}}",
        "status": "firing",
        "receiver": "ers-rollback",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [alert],
    }
    sent = await http.post(
        "/api/emergency/alerts", json=payload, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert sent.status_code == 200, sent.text


async def rollback_alert(http: httpx.AsyncClient, labels: dict[str, str]) -> dict[str, Any]:
    """Delivers a firing rollback alert; the audit trail's outcome of its rollback."""
    await deliver(http, labels)
    for _ in range(600):  # at most about a minute: the webhook acts after its answer
        entries = (await http.get("/api/emergency/audit")).json()["entries"]
        done = [e for e in entries if e["action"] == "rollback" and e["actor"] == "alertmanager"]
        if done:
            return dict(done[0]["detail"])
        await asyncio.sleep(0.1)
    raise AssertionError("the alert's rollback never ended")


async def spend(http: httpx.AsyncClient, words: str) -> None:
    reply = await http.post("/chat", json={"message": words, "userId": "ann"})
    assert reply.status_code == 200 and "Recorded" in reply.json()["response"], reply.text


async def test_a_rollback_alert_naming_a_component_rolls_back_that_one_alone(
    http: httpx.AsyncClient, app: FastAPI
) -> None:
    conversations = app.state.runtime.stores.conversations
    await spend(http, "spent $5 on lunch")
    taken = await http.post("/api/emergency/backups/create", json={"type": "full_system"})
    assert taken.status_code == 200, taken.text
    await asyncio.sleep(0.05)
    await spend(http, "spent $7 on dinner")
    turns = await turn_count(conversations)
    # Beside an agent label too: an agent holds no state of its own.
    outcome = await rollback_alert(http, {"component": "budgets", "agent": "budget"})
    assert outcome["error"] is None, outcome
    assert "rolled back budgets to" in outcome["result"]
    report = (await http.post("/chat", json={"message": "budget report", "userId": "ann"})).json()
    assert "$7" not in report["response"] and "$5" in report["response"], report
    # The conversations were not named: every turn written since the backup is still there
    # (and the budget report's own).
    assert await turn_count(conversations) == turns + 1


async def test_a_rollback_alert_naming_what_no_rollback_restores_is_refused(
    http: httpx.AsyncClient,
) -> None:
    """Refused before anything else is weighed: told first as skipped within the cooldown of
    another rollback, or as awaiting a person's approval, it read as something a person
    could allow."""
    taken = await http.post("/api/emergency/backups/create", json={"type": "full_system"})
    assert taken.status_code == 200, taken.text
    await asyncio.sleep(0.05)
    await spend(http, "spent $7 on dinner")
    for labels in ({"component": "incidents"}, {"agent": "budget"}):
        await deliver(http, labels)
    said: list[str] = []
    for _ in range(600):  # at most about a minute: the webhook acts after its answer
        said = []
        for incident in (await http.get("/api/emergency/incidents")).json()["incidents"]:
            found = (await http.get(f"/api/emergency/incidents/{incident['id']}")).json()
            said += [e["message"] for e in found["timeline"] if "rollback" in e["message"]]
        if len(said) >= 2:
            break
        await asyncio.sleep(0.1)
    assert len(said) == 2, said
    assert all("rollback refused" in m and "does not restore" in m for m in said), said
    assert any("'incidents'" in m for m in said) and any("'budget'" in m for m in said), said
    entries = (await http.get("/api/emergency/audit")).json()["entries"]
    assert not [e for e in entries if e["action"].startswith("rollback")]
    report = (await http.post("/chat", json={"message": "budget report", "userId": "ann"})).json()
    assert "$7" in report["response"], report
