"""An operator's reset, or the resolution of the incident, ends the cached answers the
responder put in an agent's place: once the agent is back, users reach it again at once, not
when serve_cached's time runs out."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import FastAPI

from service.agents.base import AgentRequest

CHAT = {"message": "budget report", "userId": "ana"}


async def serving_cached(client: httpx.AsyncClient, app: FastAPI) -> dict[str, Any]:
    """ana's last good answer, once a failing budget agent's incident serves it in its place."""
    first = await client.post("/chat", json=CHAT)
    assert first.json()["emergency"] is False  # remembered as ana's last good answer
    injected = await client.post(
        "/api/emergency/simulate-error",
        json={"component": "BMA", "errorType": "database", "severity": "high"},
    )
    assert injected.status_code == 200
    # Failing chats become a database incident; its protocol isolates the agent and serves
    # cached answers in its place. Bounded at five seconds.
    fallback = app.state.runtime.team.get("budget").fallback
    for _ in range(50):
        await client.post("/chat", json={"message": "budget report", "userId": "bo"})
        if fallback.serves_cached(AgentRequest(message=CHAT["message"], user_id="ana")):
            break
        await asyncio.sleep(0.1)
    cached = (await client.post("/chat", json=CHAT)).json()
    assert cached["emergency"] is True
    assert "here is your last answer" in cached["response"]
    assert (await client.delete("/api/emergency/simulate-error")).status_code == 200
    return first.json()


async def test_a_reset_ends_the_cached_answers_of_serve_cached(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    first = await serving_cached(client, app)
    reset = await client.post("/api/emergency/circuit-breaker/BMA/reset", json={"force": False})
    assert reset.status_code == 200, reset.text
    assert "cached answers are no longer served" in reset.json()["message"]

    after = (await client.post("/chat", json=CHAT)).json()
    assert after["emergency"] is False
    assert after["response"] == first["response"]


async def test_resolving_the_incident_ends_the_cached_answers_of_serve_cached(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    first = await serving_cached(client, app)
    [incident] = (await client.get("/api/emergency/incidents?status=active")).json()["incidents"]
    resolved = await client.post(
        f"/api/emergency/incidents/{incident['id']}/resolve", json={"resolution": "db back"}
    )
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["released"] == ["budget"]

    after = (await client.post("/chat", json=CHAT)).json()
    assert after["emergency"] is False, after
    assert after["response"] == first["response"]


async def test_a_message_answered_from_the_cache_says_it_was_not_acted_on(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """Before: an expense sent while cached answers stood in for the agent got the last
    budget report, with no word that the $10 was not recorded."""
    await serving_cached(client, app)
    spent = {"message": "spent $10 on food", "userId": "ana"}
    reply = (await client.post("/chat", json=spent)).json()
    assert reply["success"] is False and reply["recovery"]["fallback"] == "cached", reply
    assert "so what you asked of it was not done (send it again later)" in reply["response"]


async def test_an_expense_answered_by_guidance_says_it_was_not_recorded(
    client: httpx.AsyncClient,
) -> None:
    """Before: with no cached answer, the budget agent's guidance told how to keep a budget
    and not that the expense just sent was not recorded."""
    forced = await client.post(
        "/api/emergency/circuit-breaker/budget/force-open", json={"reason": "maintenance"}
    )
    assert forced.status_code == 200, forced.text
    spent = {"message": "spent $12 on groceries", "userId": "new-user"}
    reply = (await client.post("/chat", json=spent)).json()
    assert reply["success"] is False and reply["recovery"]["fallback"] == "generic", reply
    assert "no expense or limit in this message was recorded" in reply["response"], reply
