"""An operator's reset of a breaker the responder isolated for an incident notes it on that
incident: it read "mitigated: agent isolated", with nothing to say the agent took calls
again."""

from __future__ import annotations

import asyncio

import httpx


async def test_a_reset_that_lifts_the_responders_isolation_is_on_its_incident(
    client: httpx.AsyncClient,
) -> None:
    injected = await client.post(
        "/api/emergency/simulate-error",
        json={"component": "BMA", "errorType": "database", "severity": "high"},
    )
    assert injected.status_code == 200
    # A database incident's protocol isolates the agent. Bounded at five seconds.
    for _ in range(50):
        await client.post("/chat", json={"message": "budget report", "userId": "ann"})
        breaker = (await client.get("/api/emergency/circuit-breakers/budget")).json()
        if breaker["state"] == "forced_open":
            break
        await asyncio.sleep(0.1)
    await client.delete("/api/emergency/simulate-error")
    assert breaker["state"] == "forced_open" and breaker["forced"]["source"] == "responder"
    [incident] = (await client.get("/api/emergency/incidents")).json()["incidents"]

    reset = await client.post("/api/emergency/circuit-breaker/budget/reset", json={"force": True})
    assert reset.status_code == 200, reset.text

    timeline = (await client.get(f"/api/emergency/incidents/{incident['id']}")).json()["timeline"]
    notes = [entry["message"] for entry in timeline if "was lifted" in entry["message"]]
    assert notes == [
        "the isolation of budget was lifted by admin:loopback: it takes calls again"
    ], timeline
