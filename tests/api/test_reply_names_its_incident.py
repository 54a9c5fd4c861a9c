"""A degraded chat reply names the incident of its own failure: the incident an earlier,
different failure of the same agent opened is not this one's."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from service.settings import Settings

NEVER_TRIP = {"failure_threshold": 1000, "sliding_window_size": 10_000, "minimum_calls": 10_000}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The budget agent keeps failing: no responder isolates it, its breaker never opens."""
    return settings.model_copy(
        update={"auto_response_enabled": False, "agent_breakers": {"budget": NEVER_TRIP}}
    )


async def chat(client: httpx.AsyncClient) -> dict[str, Any]:
    reply = await client.post("/chat", json={"message": "budget report", "userId": "ann"})
    assert reply.status_code == 200, reply.text
    body = dict(reply.json())
    assert body["emergency"] is True
    return body


async def incident_of(client: httpx.AsyncClient, kind: str) -> str:
    """The budget incident of ``kind``, once the pipeline has written it (five seconds)."""
    for _ in range(50):
        listed = (await client.get("/api/emergency/incidents?component=budget")).json()
        ids = [i["id"] for i in listed["incidents"] if i["classification"]["type"] == kind]
        if ids:
            return str(ids[0])
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {kind} incident of budget within five seconds")


async def inject(client: httpx.AsyncClient, error_type: str) -> None:
    reply = await client.post(
        "/api/emergency/simulate-error", json={"component": "BMA", "errorType": error_type}
    )
    assert reply.status_code == 200, reply.text


async def test_a_new_kind_of_failure_does_not_get_the_earlier_incident(
    client: httpx.AsyncClient,
) -> None:
    await inject(client, "database")
    await chat(client)
    database = await incident_of(client, "database")
    assert (await chat(client))["incident"] == database

    await inject(client, "network")
    # Its first failure: its incident is written after the reply, and it is not the
    # database incident.
    assert (await chat(client))["incident"] != database
    network = await incident_of(client, "network")
    assert network != database
    assert (await chat(client))["incident"] == network


async def test_a_call_turned_away_after_a_recovery_names_no_old_incident(
    client: httpx.AsyncClient,
) -> None:
    await inject(client, "database")
    await chat(client)
    database = await incident_of(client, "database")
    forced = await client.post(
        "/api/emergency/circuit-breaker/budget/force-open",
        json={"reason": "looking into it", "ttlSeconds": 60},
    )
    assert forced.status_code == 200, forced.text
    assert (await chat(client))["incident"] == database  # turned away: the agent's incident

    # Fixed: the faults cleared, the breaker closed, the incident resolved.
    await client.delete("/api/emergency/simulate-error")
    reset = await client.post("/api/emergency/circuit-breaker/budget/reset", json={})
    assert reset.status_code == 200, reset.text
    resolved = await client.post(
        f"/api/emergency/incidents/{database}/resolve", json={"resolution": "db fixed"}
    )
    assert resolved.status_code == 200, resolved.text

    # Isolated again for another reason: the reply no longer names the resolved incident.
    forced = await client.post(
        "/api/emergency/circuit-breaker/budget/force-open",
        json={"reason": "maintenance", "ttlSeconds": 60},
    )
    assert forced.status_code == 200, forced.text
    assert (await chat(client))["incident"] is None


async def test_the_incident_list_takes_the_seeds_agent_names(client: httpx.AsyncClient) -> None:
    """component=BMA listed nothing, though the API takes the seed's names everywhere else."""
    await inject(client, "database")
    await chat(client)
    database = await incident_of(client, "database")
    for name in ("BMA", "bma", "budget"):
        listed = (await client.get(f"/api/emergency/incidents?component={name}")).json()
        assert [i["id"] for i in listed["incidents"]] == [database], (name, listed)
    listed = (await client.get("/api/emergency/incidents?component=Budget-Svc")).json()
    assert listed["total"] == 0


async def test_a_call_turned_away_by_another_replicas_isolation_names_its_incident(
    client: httpx.AsyncClient, app: Any
) -> None:
    """The fleet's override forces the breaker open here for an incident this replica never
    acted on: the replies named no incident (its other replica's did)."""
    breaker = app.state.runtime.team.get("budget").breaker
    # As the fleet applies another replica's override (service.fleet.overrides).
    breaker.force_open(
        "critical database incident INC_1796464959850_h2e716 (fleet override from b:1)",
        "responder",
        ttl_s=600,
        incident="INC_1796464959850_h2e716",
    )
    body = await chat(client)
    assert body["incident"] == "INC_1796464959850_h2e716", body
    assert {"action": "isolate", "result": "success"} in body["recovery"]["actions"], body


async def test_a_forced_open_renewed_for_another_incident_is_named_as_the_breaker_names_it(
    client: httpx.AsyncClient, app: Any
) -> None:
    """Two failures of one agent at once, two incidents: the isolation for the second renews
    the first's forced open ("stays forced open"). The breaker named the second incident,
    the replies it turned away still the first."""
    breaker = app.state.runtime.team.get("budget").breaker
    first, second = "INC_1796464959850_aaaaaa", "INC_1796464959851_bbbbbb"
    breaker.force_open(f"incident {first}", "responder", ttl_s=600, incident=first)
    assert (await chat(client))["incident"] == first
    said = breaker.force_open(f"incident {second}", "responder", ttl_s=600, incident=second)
    assert "stays forced open" in said
    assert breaker.forcing is not None and breaker.forcing.incident == second
    assert second in breaker.snapshot()["forced"]["reason"]
    body = await chat(client)
    assert body["incident"] == second, body
