"""Minimal response mode as an operator meets it: a critical incident turns it on (the
responder's CRITICAL_SYSTEM_FAILURE protocol), the status says so with its reason and time
left, and the operator can end it once the cause is dealt with."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from service.chat.minimal_mode import MINIMAL_ANSWER


async def status(client: httpx.AsyncClient) -> dict:
    reply = await client.get("/api/emergency/status")
    assert reply.status_code == 200, reply.text
    return reply.json()


async def critical_failure(client: httpx.AsyncClient) -> str:
    """Fail the budget agent's core until the responder puts chat in minimal mode (an uncaught
    core failure is critical); the incident that did, bounded at five seconds."""
    injected = await client.post(
        "/api/emergency/simulate-error", json={"component": "BMA", "errorType": "system"}
    )
    assert injected.status_code == 200
    for _ in range(50):
        await client.post("/chat", json={"message": "budget report"})
        if (await status(client))["minimalMode"]["active"]:
            break
        await asyncio.sleep(0.1)
    incident = (await status(client))["minimalMode"]["incident"]
    assert incident, "minimal mode did not come on"
    return str(incident)


async def test_status_shows_minimal_mode_and_an_operator_ends_it(client: httpx.AsyncClient) -> None:
    assert (await status(client))["minimalMode"] == {
        "active": False,
        "remainingSeconds": 0,
        "reason": None,
        "incident": None,
    }
    not_on = await client.delete("/api/emergency/minimal-mode")
    assert not_on.status_code == 200 and not_on.json()["ended"] is False

    await critical_failure(client)
    shown = (await status(client))["minimalMode"]
    assert shown["active"] is True and shown["remainingSeconds"] > 0
    assert shown["reason"] and shown["incident"].startswith("INC_")
    minimal = (await client.post("/chat", json={"message": "make me a workout plan"})).json()
    assert minimal["response"] == MINIMAL_ANSWER and minimal["emergency"] is True
    # The reply names the critical incident that put chat in this mode (before: null).
    assert minimal["incident"] == shown["incident"]
    incident = await client.get(f"/api/emergency/incidents/{shown['incident']}")
    assert incident.status_code == 200
    assert incident.json()["classification"]["severity"] == "critical"

    assert (await client.delete("/api/emergency/simulate-error")).status_code == 200
    ended = await client.delete("/api/emergency/minimal-mode")
    assert ended.status_code == 200, ended.text
    assert ended.json()["ended"] is True and ended.json()["minimalMode"]["active"] is False
    assert (await status(client))["minimalMode"]["active"] is False
    answered = (await client.post("/chat", json={"message": "make me a workout plan"})).json()
    assert answered["response"] != MINIMAL_ANSWER and answered["emergency"] is False


async def test_resolving_the_critical_incident_ends_minimal_mode(client: httpx.AsyncClient) -> None:
    incident = await critical_failure(client)
    assert (await client.delete("/api/emergency/simulate-error")).status_code == 200

    resolved = await client.post(
        f"/api/emergency/incidents/{incident}/resolve", json={"resolution": "store fixed"}
    )
    assert resolved.status_code == 200, resolved.text
    # Before: minimal mode ran on for its full time, naming an incident already resolved.
    assert resolved.json()["minimalModeEnded"] is True
    assert (await status(client))["minimalMode"]["active"] is False
    answered = (await client.post("/chat", json={"message": "make me a workout plan"})).json()
    assert answered["response"] != MINIMAL_ANSWER and answered["emergency"] is False


async def test_minimal_mode_ends_within_a_tick_of_its_incident_resolved_elsewhere(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """On PostgreSQL another replica may resolve the incident, or it resolves on its own once
    quiet: this replica's next tick ends the mode it turned on for that incident."""
    incident = await critical_failure(client)
    incidents = app.state.runtime.incident_service
    await incidents.tick()
    assert (await status(client))["minimalMode"]["active"] is True  # still open: it stays

    # What another replica's resolve does to the shared store; this replica's route is not
    # called, so only the tick can notice.
    await asyncio.to_thread(incidents.store.resolve, incident, "replica-b", "store fixed")
    await incidents.tick()
    assert (await status(client))["minimalMode"]["active"] is False
