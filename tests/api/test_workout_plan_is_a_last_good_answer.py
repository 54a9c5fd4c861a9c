"""A workout plan is a last good answer even when the agent saved the level or equipment it
was asked for: the plan answers the user's next request for one. Replies that carry writes
were all left out of the fallback cache (so that "Recorded $25.00 for food" is never served
again), so a user who had named a level or equipment once (every later plan then saves it
again) got only general guidance while the workout agent failed."""

from __future__ import annotations

import httpx


async def chat(client: httpx.AsyncClient, message: str) -> dict:
    reply = await client.post("/chat", json={"message": message, "userId": "wes"})
    assert reply.status_code == 200, reply.text
    return reply.json()


async def test_a_plan_that_saved_preferences_answers_when_the_agent_cannot(
    client: httpx.AsyncClient,
) -> None:
    plan = await chat(client, "beginner workout plan with dumbbells")
    assert plan["agent"] == "workout" and plan["emergency"] is False
    assert plan["response"].startswith("Your weekly plan"), plan["response"]
    injected = await client.post(
        "/api/emergency/simulate-error", json={"component": "workout", "errorType": "agent"}
    )
    assert injected.status_code == 200, injected.text
    degraded = await chat(client, "make me a workout plan")
    assert degraded["emergency"] is True
    assert degraded["recovery"]["fallback"] == "cached", degraded
    assert plan["response"] in degraded["response"]


async def test_a_recorded_budget_limit_is_still_no_fallback(client: httpx.AsyncClient) -> None:
    await chat(client, "set my food budget to $400")
    injected = await client.post(
        "/api/emergency/simulate-error", json={"component": "budget", "errorType": "agent"}
    )
    assert injected.status_code == 200, injected.text
    degraded = await chat(client, "budget report")
    assert degraded["emergency"] is True
    assert "Set your monthly" not in degraded["response"], degraded["response"]
