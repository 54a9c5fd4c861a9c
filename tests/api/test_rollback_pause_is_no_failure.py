"""While a rollback replaces a store's state, chats that need that store are told to retry in
a moment. They used to fail inside the agent as if it were broken: each one counted against
its breaker, opened a high "database" incident (the responder then isolated the agent for
minutes after the rollback ended), and got the agent's last good answer, which for a budget
was the confirmation of an earlier, other expense ("Recorded $583.00 for food")."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

# The words the backup service pauses a store with for a rollback.
PAUSED = "a rollback is replacing this store (restore, safety snapshot, swap); retry shortly"


async def chat(client: httpx.AsyncClient, message: str) -> httpx.Response:
    return await client.post("/chat", json={"message": message, "userId": "ann"})


async def test_a_chat_during_a_rollbacks_pause_is_asked_to_retry(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    assert (await chat(client, "spent $25 on groceries")).json()["success"] is True
    stores = app.state.runtime.stores
    with stores.paused(["budgets"], PAUSED):
        replies = [await chat(client, "spent $30 on groceries") for _ in range(8)]
    for reply in replies:
        assert reply.status_code == 503, reply.text
        assert reply.headers["Retry-After"] == "1"
        assert reply.json()["component"] == "budgets"
        assert reply.json()["detail"] == f"the budgets store is paused: {PAUSED}"
    breaker = (await client.get("/api/emergency/circuit-breakers/budget")).json()
    assert breaker["state"] == "closed" and breaker["failureCount"] == 0
    await asyncio.sleep(0.3)  # an error span would have been classified by now
    incidents = (await client.get("/api/emergency/incidents")).json()["incidents"]
    assert incidents == [], [(i["spanName"], i["exceptionType"], i["message"]) for i in incidents]
    after = await chat(client, "spent $30 on groceries")
    assert after.json()["response"].startswith("Recorded $30.00 for food")


async def test_a_recorded_write_is_no_fallback_for_a_later_request(
    client: httpx.AsyncClient,
) -> None:
    assert (await chat(client, "spent $25 on groceries")).json()["success"] is True
    injected = await client.post(
        "/api/emergency/simulate-error", json={"component": "budget", "errorType": "agent"}
    )
    assert injected.status_code == 200, injected.text
    degraded = (await chat(client, "spent $30 on groceries")).json()
    assert degraded["emergency"] is True and degraded["success"] is False
    assert "Recorded $25.00" not in degraded["response"], degraded["response"]
