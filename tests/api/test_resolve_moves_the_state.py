"""Resolving the last critical incident moves the system state at once: the status never
says "1 critical incident(s) active" beside "activeIncidents": 0."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from service.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No responder: the state follows the incident alone, not an isolation."""
    return settings.model_copy(update={"auto_response_enabled": False})


async def test_the_state_leaves_emergency_with_the_resolve(client: httpx.AsyncClient) -> None:
    injected = await client.post(
        "/api/emergency/simulate-error", json={"component": "BMA", "errorType": "system"}
    )
    assert injected.status_code == 200
    await client.post("/chat", json={"message": "budget report", "userId": "ann"})
    await client.delete("/api/emergency/simulate-error")
    for _ in range(50):  # the critical incident is written off the request path
        status = (await client.get("/api/emergency/status")).json()
        if status["systemState"] == "emergency":
            break
        await asyncio.sleep(0.1)
    assert status["systemState"] == "emergency", status
    [incident] = (await client.get("/api/emergency/incidents?severity=critical")).json()[
        "incidents"
    ]

    resolved = await client.post(
        f"/api/emergency/incidents/{incident['id']}/resolve", json={"resolution": "fixed"}
    )
    assert resolved.status_code == 200, resolved.text
    after = (await client.get("/api/emergency/status")).json()
    assert after["activeIncidents"] == 0
    assert after["systemState"] == "recovery", after
