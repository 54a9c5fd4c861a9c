"""A forced open that ran out while no call came: the breakers, the status and the health
used to show it forced open (and the system degraded) until the next call reached the agent,
for an agent with little traffic indefinitely."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI

from service.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"auto_response_enabled": False})


async def test_a_forcing_that_ran_out_is_reported_as_over(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    forced = await client.post(
        "/api/emergency/circuit-breaker/workout/force-open",
        json={"reason": "bad plans", "ttlSeconds": 0.2},
    )
    assert forced.status_code == 200, forced.text
    status = (await client.get("/api/emergency/status")).json()
    assert status["systemState"] == "degraded" and status["circuitBreakers"]["open"] == 1
    await asyncio.sleep(0.3)  # no call to the workout agent meanwhile

    breakers = (await client.get("/api/emergency/circuit-breakers")).json()["breakers"]
    assert breakers["workout"]["state"] == "half_open"
    assert breakers["workout"]["forced"] is None
    status = (await client.get("/api/emergency/status")).json()
    assert status["circuitBreakers"]["open"] == 0 and status["circuitBreakers"]["halfOpen"] == 1
    assert "forced" not in status["stateReason"]
    history = (await client.get("/api/emergency/circuit-breakers/workout")).json()["history"]
    assert history[-1]["reason"] == "forced open expired; admitting trial calls"

    # The health loop runs the same check: it moves on by itself, without a read.
    app.state.runtime.team.get("nutrition").breaker.force_open("x", "operator", ttl_s=0.1)
    await asyncio.sleep(0.2)
    report = await app.state.runtime.health.evaluate()
    assert report.checks["breakers"].figures["states"]["nutrition"] == "half_open"
