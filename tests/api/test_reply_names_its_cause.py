"""A degraded chat reply names the incident of its own cause: two failures of one agent with
one exception class but different causes are two incidents, and each reply names its own."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from service.settings import Settings

NEVER_TRIP = {"failure_threshold": 1000, "sliding_window_size": 10_000, "minimum_calls": 10_000}
AGENTS = {
    "nutrition": {"kind": "python", "factory": "nutrition"},
    "coach": {"kind": "python", "factory": "tests.service.own_agents:moody"},
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The coach fails every call; no responder isolates it, its breaker never opens."""
    return settings.model_copy(
        update={
            "auto_response_enabled": False,
            "agents": AGENTS,
            "agent_routes": {"workout": "coach"},
            "agent_breakers": {"coach": NEVER_TRIP},
        }
    )


async def chat(client: httpx.AsyncClient, cause: str) -> str | None:
    message = f"make me a workout plan: {cause}"
    reply = await client.post("/chat", json={"message": message, "userId": "ann"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["emergency"] is True, reply.text
    return reply.json()["incident"]  # type: ignore[no-any-return]


async def incident_of(client: httpx.AsyncClient, cause: str) -> str:
    """The coach's incident whose message names ``cause``, once written (five seconds)."""
    for _ in range(50):
        listed = (await client.get("/api/emergency/incidents?component=coach")).json()
        for incident in listed["incidents"]:
            details = await client.get(f"/api/emergency/incidents/{incident['id']}")
            if cause in details.text:
                return str(incident["id"])
        await asyncio.sleep(0.1)
    raise AssertionError(f"no coach incident naming {cause!r} within five seconds")


async def test_a_new_cause_of_the_same_exception_class_does_not_get_the_earlier_incident(
    client: httpx.AsyncClient,
) -> None:
    await chat(client, "missing")
    missing = await incident_of(client, "missing")
    assert await chat(client, "missing") == missing

    # Its first failure: its incident is written after the reply, and it is not the one of
    # the model that was missing.
    assert await chat(client, "corrupt") != missing
    corrupt = await incident_of(client, "corrupt")
    assert corrupt != missing
    assert await chat(client, "corrupt") == corrupt
    assert await chat(client, "missing") == missing
