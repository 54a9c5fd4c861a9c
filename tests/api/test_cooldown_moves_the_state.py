"""A rate limit's cooldown degrades the system state the moment it starts, and its reset
moves the state on at once, as a breaker's transitions do: the state was evaluated on
breaker transitions, incidents, status reads and health ticks only, so the replies of the
chats that fell back because the agent asked to be left alone still said "normal" while
the status said "degraded (cooling down)"."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from service.agents.base import AgentReply, AgentRequest
from service.agents.failure_kinds import RateLimited


class AsksToWait:
    name = "workout"

    async def handle(self, request: AgentRequest) -> AgentReply:
        raise RateLimited("HTTP 429 Too Many Requests", status=429, retry_after_s=600)


async def test_a_cooldown_degrades_the_replies_and_a_reset_ends_it(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    guard = app.state.runtime.team.guards["workout"]
    working = guard.agent
    guard.agent = AsksToWait()
    plan = {"message": "make me a workout plan", "userId": "cool1"}
    first = (await client.post("/chat", json=plan)).json()
    assert first["emergency"] is True, first
    assert first["systemState"] == "degraded", first
    again = (await client.post("/chat", json=plan)).json()
    assert again["emergency"] is True and again["systemState"] == "degraded", again
    assert guard.cooldown_remaining() > 590
    guard.agent = working
    reset = await client.post("/api/emergency/circuit-breaker/workout/reset", json={})
    assert reset.status_code == 200, reset.text
    assert guard.cooldown_remaining() == 0
    back = (await client.post("/chat", json=plan)).json()
    assert back["emergency"] is False and back["systemState"] == "recovery", back
