"""An operator who disabled an agent's breaker (every call let through) has said the calls
are to reach the agent. The responder's isolate used to force that breaker open anyway,
replacing the operator's choice ("forced open, not disabled; nothing to enable")."""

from __future__ import annotations

import asyncio

import httpx


async def test_the_responder_leaves_an_operators_disabled_breaker_alone(
    client: httpx.AsyncClient,
) -> None:
    disabled = await client.post("/api/emergency/circuit-breaker/workout/disable")
    assert disabled.status_code == 200, disabled.text
    injected = await client.post(
        "/api/emergency/simulate-error",
        json={"component": "workout", "errorType": "timeout", "count": 6},
    )
    assert injected.status_code == 200, injected.text
    for _ in range(3):
        await client.post("/chat", json={"message": "make me a workout plan", "userId": "ann"})

    skipped: list[str] = []
    for _ in range(100):  # the incident and its response run off the request path
        incidents = (await client.get("/api/emergency/incidents?component=workout")).json()
        if incidents["incidents"]:
            incident_id = incidents["incidents"][0]["id"]
            timeline = (await client.get(f"/api/emergency/incidents/{incident_id}")).json()[
                "timeline"
            ]
            skipped = [e["message"] for e in timeline if e["kind"] == "action_skipped"]
            if skipped:
                break
        await asyncio.sleep(0.05)
    assert skipped == [
        "isolate: skipped — an operator disabled workout's breaker (every call let through); "
        "`ers breakers enable workout` lets ERS isolate again (for this incident once this "
        "skip's cooldown, 300 s, is over)",
    ]
    breakers = (await client.get("/api/emergency/circuit-breakers")).json()["breakers"]
    assert breakers["workout"]["state"] == "disabled"


async def test_health_names_a_disabled_breaker(client: httpx.AsyncClient) -> None:
    """Health said "every breaker closed" with a breaker disabled, so a disable forgotten
    after an investigation never showed."""
    disabled = await client.post("/api/emergency/circuit-breaker/workout/disable")
    assert disabled.status_code == 200, disabled.text
    check = (await client.get("/api/emergency/health")).json()["checks"]["breakers"]
    assert check["reason"] == "no breaker open; disabled (calls unguarded): workout", check
    assert check["figures"]["disabled"] == ["workout"]
    enabled = await client.post("/api/emergency/circuit-breaker/workout/enable")
    assert enabled.status_code == 200, enabled.text
    check = (await client.get("/api/emergency/health")).json()["checks"]["breakers"]
    assert check["reason"] == "every breaker closed", check


async def test_a_force_open_and_a_disable_say_which_one_they_replace(
    client: httpx.AsyncClient,
) -> None:
    """A breaker has one state: a force-open of a disabled breaker ended the disable (and a
    disable ended a forced open) without a word, and 'enable' later found nothing to enable."""
    base = "/api/emergency/circuit-breaker/workout"
    assert (await client.post(f"{base}/disable")).status_code == 200
    forced = await client.post(f"{base}/force-open", json={"reason": "x", "ttlSeconds": 60})
    assert forced.status_code == 200, forced.text
    assert (
        "it was disabled, and when this forced open ends it guards calls again"
        in (forced.json()["message"])
    ), forced.json()
    disabled = await client.post(f"{base}/disable")
    assert disabled.status_code == 200, disabled.text
    assert "its forced open by admin:loopback is lifted" in disabled.json()["message"], (
        disabled.json()
    )
