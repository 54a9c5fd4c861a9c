"""An incident that reopens after a resolve is a new episode: the responder acts on it again.
It used to skip every action in silence, because they had run for the same incident within
the cooldown (5 minutes), so the reopened incident stayed open with no isolation and nothing
on its timeline to say why."""

from __future__ import annotations

import asyncio

import httpx


async def _fail_budget(client: httpx.AsyncClient) -> None:
    injected = await client.post(
        "/api/emergency/simulate-error", json={"component": "budget", "errorType": "database"}
    )
    assert injected.status_code == 200, injected.text
    for _ in range(3):
        await client.post("/chat", json={"message": "budget report", "userId": "ann"})


async def _isolations(client: httpx.AsyncClient, incident_id: str, count: int) -> list[str]:
    for _ in range(100):  # the incident and its response run off the request path
        timeline = (await client.get(f"/api/emergency/incidents/{incident_id}")).json()["timeline"]
        done = [
            entry["message"]
            for entry in timeline
            if entry["kind"] == "action_finished" and entry["message"].startswith("isolate")
        ]
        if len(done) >= count:
            return done
        await asyncio.sleep(0.05)
    return done


async def test_the_responder_acts_again_on_a_reopened_incident(client: httpx.AsyncClient) -> None:
    await _fail_budget(client)
    for _ in range(100):
        listed = (await client.get("/api/emergency/incidents?component=budget")).json()
        if listed["incidents"]:
            break
        await asyncio.sleep(0.05)
    [incident] = listed["incidents"]
    assert len(await _isolations(client, incident["id"], 1)) == 1

    # The operator fixes the cause, closes the breaker and resolves the incident.
    await client.delete("/api/emergency/simulate-error")
    reset = await client.post("/api/emergency/circuit-breaker/budget/reset", json={})
    assert reset.status_code == 200, reset.text
    resolved = await client.post(
        f"/api/emergency/incidents/{incident['id']}/resolve", json={"resolution": "db fixed"}
    )
    assert resolved.status_code == 200, resolved.text

    # The same failure again, a minute later at most: the incident reopens and is isolated again.
    await _fail_budget(client)
    isolated = await _isolations(client, incident["id"], 2)
    assert len(isolated) == 2, isolated
    assert isolated[1].startswith("isolate: success"), isolated
    breakers = (await client.get("/api/emergency/circuit-breakers")).json()
    budget = breakers["breakers"]["budget"]
    assert budget["state"] == "forced_open", budget
    reopened = (await client.get(f"/api/emergency/incidents/{incident['id']}")).json()
    assert reopened["status"] != "resolved" and reopened["reopenCount"] == 1, reopened
