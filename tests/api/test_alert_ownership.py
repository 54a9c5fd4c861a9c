"""An alert undoes only what its own firing did: a resolution whose firing never reached ERS
resolves no incident, and an alert's isolation never takes over an operator's."""

from __future__ import annotations

import copy

import httpx
import pytest
from fastapi import FastAPI

from tests.api.test_alert_webhook import AUTH, FIRING, hook, resolved_payload, settings, settle

__all__ = ["hook", "settings"]  # the fixtures, shared with the webhook's tests


def about(payload: dict, agent: str) -> dict:
    payload = copy.deepcopy(payload)
    for labels in (payload["commonLabels"], payload["alerts"][0]["labels"]):
        labels["agent"] = agent
    return payload


async def test_a_resolution_whose_firing_never_arrived_resolves_nothing(
    hook: httpx.AsyncClient, app: FastAPI, client: httpx.AsyncClient
) -> None:
    # A real critical incident of the budget agent, from the service's own fault injection.
    injected = await client.post(
        "/api/emergency/simulate-error",
        json={"component": "budget", "errorType": "system", "count": 1},
    )
    assert injected.status_code == 200
    await client.post("/chat", json={"message": "budget report", "userId": "t"})
    app.state.runtime.incident_service.processor.force_flush()
    (critical,), _ = app.state.runtime.incidents.list(status="active")
    assert critical.severity == "critical"

    # ERS was down while the alert fired; Alertmanager sends its resolution alone.
    reply = await hook.post(
        "/api/emergency/alerts", json=about(resolved_payload(), "budget"), headers=AUTH
    )
    assert reply.status_code == 200
    await settle(app)
    # Before: the critical incident was resolved by alertmanager (and minimal mode ended).
    assert app.state.runtime.incidents.get(critical.id).status == "open"
    entry = app.state.runtime.alerts.ledger.entry(
        "5e0f1c9a2b3d4e5f", "2026-11-28T12:00:00+00:00", "resolved"
    )
    assert "reached no incident" in entry["outcome"]


async def test_an_alert_leaves_an_operators_isolation_as_it_was(
    hook: httpx.AsyncClient, app: FastAPI, client: httpx.AsyncClient
) -> None:
    forced = await client.post(
        "/api/emergency/circuit-breaker/nutrition/force-open",
        json={"reason": "bad meal data", "ttlSeconds": 3600},
    )
    assert forced.status_code == 200, forced.text
    breaker = app.state.runtime.team.get("nutrition").breaker
    before = breaker.snapshot()["forced"]
    for payload in (about(FIRING, "nutrition"), about(resolved_payload(), "nutrition")):
        reply = await hook.post("/api/emergency/alerts", json=payload, headers=AUTH)
        assert reply.status_code == 200
        await settle(app)
        # Before: the alert took the forcing over (900 s), and its resolution released it.
        assert breaker.state.value == "forced_open"
        assert breaker.snapshot()["forced"] == before


async def test_a_resolution_of_an_isolation_released_already_says_so(
    hook: httpx.AsyncClient, app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Before: it said "not held by alertmanager", as if someone else held the breaker."""
    reply = await hook.post("/api/emergency/alerts", json=about(FIRING, "nutrition"), headers=AUTH)
    assert reply.status_code == 200
    await settle(app)
    assert app.state.runtime.team.get("nutrition").breaker.state.value == "forced_open"
    released = await client.post("/api/emergency/circuit-breaker/nutrition/release")
    assert released.status_code == 200, released.text

    payload = about(resolved_payload(), "nutrition")
    assert (await hook.post("/api/emergency/alerts", json=payload, headers=AUTH)).is_success
    await settle(app)
    entry = app.state.runtime.alerts.ledger.entry(
        "5e0f1c9a2b3d4e5f", "2026-11-28T12:00:00+00:00", "resolved"
    )
    assert "is half-open, not forced open; nothing to release" in entry["outcome"], entry


async def test_a_resolution_whose_firing_isolated_nothing_leaves_another_alerts_isolation(
    hook: httpx.AsyncClient, app: FastAPI
) -> None:
    """Two isolate alerts about one agent: the first isolates it, the second, landing on the
    same incident within the cooldown, does nothing. The second's resolution released the
    first's isolation and resolved the incident the first still fired for."""
    runtime = app.state.runtime
    breaker = runtime.team.get("workout").breaker
    await settle_after(hook, app, FIRING)
    (incident,) = runtime.incidents.list(component="workout")[0]
    assert breaker.state.value == "forced_open"
    other = copy.deepcopy(FIRING)
    other["alerts"][0]["labels"]["alertname"] = "WorkoutSlowCalls"
    other["alerts"][0]["fingerprint"] = "6a1b2c3d4e5f6071"
    await settle_after(hook, app, other)
    entry = runtime.alerts.ledger.entry("6a1b2c3d4e5f6071", "2026-11-28T12:00:00+00:00", "firing")
    assert entry is not None and entry["outcome"].startswith("isolate: skipped"), entry

    other_resolved = copy.deepcopy(other)
    other_resolved["status"] = other_resolved["alerts"][0]["status"] = "resolved"
    status_before = runtime.incidents.get(incident.id).status
    await settle_after(hook, app, other_resolved)
    assert breaker.state.value == "forced_open"
    assert breaker.snapshot()["forced"]["source"] == "alertmanager"
    # Nothing done for it, nothing recovered by it: the incident is neither resolved nor
    # marked mitigated by this alert.
    assert runtime.incidents.get(incident.id).status == status_before
    entry = runtime.alerts.ledger.entry("6a1b2c3d4e5f6071", "2026-11-28T12:00:00+00:00", "resolved")
    assert entry is not None and "AgentErrorRatioHigh" in entry["outcome"], entry
    assert "still fires; the breaker is left as it is" in entry["outcome"], entry

    # The alert that isolated the agent resolves: its own resolution recovers as before.
    await settle_after(hook, app, resolved_payload())
    assert breaker.state.value == "closed"
    assert runtime.incidents.get(incident.id).status == "resolved"


async def settle_after(hook: httpx.AsyncClient, app: FastAPI, payload: dict) -> None:
    reply = await hook.post("/api/emergency/alerts", json=payload, headers=AUTH)
    assert reply.status_code == 200, reply.text
    await settle(app)


async def test_an_isolate_alert_about_no_agent_leaves_the_incident_it_landed_on_as_it_was(
    hook: httpx.AsyncClient, app: FastAPI
) -> None:
    """An isolate alert naming a component that is no agent (another service's, whose
    incident came from its spans) isolates nothing; its resolution marked that incident
    mitigated all the same, though nothing had been done about it."""
    runtime = app.state.runtime
    other = copy.deepcopy(FIRING)
    other["alerts"][0]["labels"] = {"alertname": "ShopDown", "component": "shop"}
    other["alerts"][0]["fingerprint"] = "7b2c3d4e5f607182"
    await settle_after(hook, app, other)  # no action: an incident of its own, for shop
    (incident,) = runtime.incidents.list(component="shop")[0]

    isolate = copy.deepcopy(FIRING)
    isolate["alerts"][0]["labels"]["agent"] = "shop"
    await settle_after(hook, app, isolate)
    resolved = copy.deepcopy(isolate)
    resolved["status"] = resolved["alerts"][0]["status"] = "resolved"
    await settle_after(hook, app, resolved)
    assert runtime.incidents.get(incident.id).status == "open"
    entry = runtime.alerts.ledger.entry("5e0f1c9a2b3d4e5f", "2026-11-28T12:00:00+00:00", "resolved")
    assert entry is not None and "left to" in entry["outcome"], entry


@pytest.mark.parametrize("cooldown_s", [300.0, 0.0], ids=["skipped-within-cooldown", "ran"])
async def test_an_isolation_another_alert_still_fires_for_outlives_the_first_resolution(
    hook: httpx.AsyncClient, app: FastAPI, cooldown_s: float
) -> None:
    """Two isolate alerts about one agent: the second's isolation skipped within the
    responder's cooldown (the first's holds the agent), or run as well. The first to resolve
    released the agent and resolved the incident while the other still fired. An isolation
    now stands while an alert it holds the agent for still fires; the last one releases it."""
    runtime = app.state.runtime
    runtime.alerts.responder.cooldown_s = cooldown_s
    breaker = runtime.team.get("workout").breaker
    await settle_after(hook, app, FIRING)
    (incident,) = runtime.incidents.list(component="workout")[0]
    other = copy.deepcopy(FIRING)
    other["alerts"][0]["labels"]["alertname"] = "WorkoutSlowCalls"
    other["alerts"][0]["fingerprint"] = "6a1b2c3d4e5f6071"
    await settle_after(hook, app, other)
    entry = runtime.alerts.ledger.entry("6a1b2c3d4e5f6071", "2026-11-28T12:00:00+00:00", "firing")
    ran = "isolate: success" if cooldown_s == 0 else "isolate: skipped within the cooldown"
    assert entry is not None and entry["outcome"].startswith(ran), entry

    # The first resolves; the second still fires.
    await settle_after(hook, app, resolved_payload())
    assert breaker.state.value == "forced_open"
    assert runtime.incidents.get(incident.id).status != "resolved"
    entry = runtime.alerts.ledger.entry("5e0f1c9a2b3d4e5f", "2026-11-28T12:00:00+00:00", "resolved")
    assert entry is not None and "alert WorkoutSlowCalls" in entry["outcome"], entry
    assert "still fires" in entry["outcome"], entry

    # The second resolves: nothing holds the agent any more.
    other_resolved = copy.deepcopy(other)
    other_resolved["status"] = other_resolved["alerts"][0]["status"] = "resolved"
    await settle_after(hook, app, other_resolved)
    assert breaker.state.value == "closed"
    assert runtime.incidents.get(incident.id).status == "resolved"
