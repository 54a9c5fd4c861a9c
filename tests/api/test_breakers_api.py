"""Circuit-breaker endpoints and the access rules of the endpoints that change something."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from service.settings import Settings
from service.web.app import create_app


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Breakers alone: the responder would also force breakers open on the incidents."""
    return settings.model_copy(update={"auto_response_enabled": False})


async def fail_budget_until_open(client: httpx.AsyncClient, app: FastAPI) -> None:
    injected = await client.post(
        "/api/emergency/simulate-error", json={"component": "BMA", "errorType": "database"}
    )
    assert injected.status_code == 200
    for _ in range(5):
        reply = await client.post("/chat", json={"message": "budget report"})
        assert reply.status_code == 200
        assert reply.json()["emergency"] is True
    assert app.state.runtime.team.get("budget").breaker.state.value == "open"


async def test_list_has_every_agent_and_seed_totals(client: httpx.AsyncClient) -> None:
    body = (await client.get("/api/emergency/circuit-breakers")).json()
    assert set(body["breakers"]) == {"router", "nutrition", "workout", "budget"}
    assert body["totals"] == {
        "total": 4,
        "open": 0,
        "closed": 4,
        "half_open": 0,
        "forced_open": 0,
        "disabled": 0,
        "cooling_down": 0,
    }
    budget = body["breakers"]["budget"]
    for key in (
        "state",
        "failureCount",
        "failureRate",
        "lastFailureAt",
        "lastError",
        "openedAt",
        "nextAttemptAt",
        "forced",
    ):
        assert key in budget


async def test_seed_alias_and_unknown_name(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/emergency/circuit-breakers/BMA")).json()["name"] == "budget"
    missing = await client.post("/api/emergency/circuit-breaker/XYZ/reset", json={})
    assert missing.status_code == 404
    assert "known agents: budget, nutrition, router, workout" in missing.json()["detail"]


async def test_reset_refused_while_the_cause_still_fails_then_forced(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await fail_budget_until_open(client, app)
    body = (await client.get("/api/emergency/circuit-breakers")).json()
    assert body["totals"]["open"] == 1
    assert "SimulatedDatabaseError" in body["breakers"]["budget"]["lastError"]
    refused = await client.post("/api/emergency/circuit-breaker/BMA/reset", json={"force": False})
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        "breaker 'budget' is open and its health probe still fails (SimulatedDatabaseError: "
        "Database connection timeout); fix the cause or reset with force"
    )
    assert app.state.runtime.team.get("budget").breaker.state.value == "open"
    forced = await client.post("/api/emergency/circuit-breaker/BMA/reset", json={"force": True})
    assert forced.status_code == 200
    assert forced.json()["breaker"]["state"] == "closed"


@pytest.mark.parametrize(
    ("state", "words"), [("half_open", "half-open"), ("disabled", "disabled"), ("closed", "closed")]
)
async def test_a_reset_is_refused_in_any_state_while_the_probe_fails(
    client: httpx.AsyncClient, app: FastAPI, state: str, words: str
) -> None:
    """A reset says the agent is fit for calls: a released (half-open), disabled or closed
    breaker whose agent still fails its probe was closed all the same."""
    base = "/api/emergency/circuit-breaker/BMA"
    if state == "half_open":
        await client.post(f"{base}/force-open", json={"reason": "look"})
        await client.post(f"{base}/release")
    elif state == "disabled":
        await client.post(f"{base}/disable")
    breaker = app.state.runtime.team.get("budget").breaker
    assert breaker.state.value == state
    fault = {"component": "BMA", "errorType": "database"}
    assert (await client.post("/api/emergency/simulate-error", json=fault)).status_code == 200
    refused = await client.post(f"{base}/reset")
    assert refused.status_code == 409, refused.text
    assert refused.json()["detail"].startswith(
        f"breaker 'budget' is {words} and its health probe still fails (SimulatedDatabaseError"
    )
    assert breaker.state.value == state
    forced = await client.post(f"{base}/reset", json={"force": True})
    assert forced.status_code == 200 and breaker.state.value == "closed"


async def test_reset_without_force_closes_the_breaker_once_the_fault_is_cleared(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await fail_budget_until_open(client, app)
    cleared = await client.delete("/api/emergency/simulate-error", params={"component": "BMA"})
    assert cleared.json()["active"] == []
    # The last failure is moments old; the probe run by the reset says the cause is gone.
    reply = await client.post("/api/emergency/circuit-breaker/BMA/reset")
    assert reply.status_code == 200, reply.text
    assert reply.json()["breaker"]["state"] == "closed"
    assert reply.json()["breaker"]["failureCount"] == 0
    chat = await client.post("/chat", json={"message": "budget report"})
    assert chat.json()["emergency"] is False


async def test_force_open_and_release(client: httpx.AsyncClient) -> None:
    forced = await client.post(
        "/api/emergency/circuit-breaker/workout/force-open",
        json={"reason": "maintenance", "ttlSeconds": 60},
    )
    assert forced.status_code == 200
    assert forced.json()["breaker"]["forced"]["source"] == "admin:loopback"
    reply = await client.post("/chat", json={"message": "make me a workout plan"})
    assert reply.json()["emergency"] is True
    released = await client.post("/api/emergency/circuit-breaker/workout/release")
    assert released.json()["breaker"]["state"] == "half_open"
    reply = await client.post("/chat", json={"message": "make me a workout plan"})
    assert reply.json()["emergency"] is False
    assert (await client.get("/api/emergency/circuit-breakers")).json()["breakers"]["workout"][
        "state"
    ] == "closed"


@pytest.fixture
async def guarded_app(settings: Settings) -> FastAPI:
    settings = settings.model_copy(update={"admin_token": SecretStr("t0ken-admin")})
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


async def test_a_set_token_is_required(guarded_app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=guarded_app, client=("127.0.0.1", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        url = "/api/emergency/circuit-breaker/budget/reset"
        missing = await http.post(url, json={"force": True})
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = await http.post(url, json={"force": True}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert "t0ken-admin" not in wrong.text
        right = await http.post(
            url, json={"force": True}, headers={"Authorization": "Bearer t0ken-admin"}
        )
        assert right.status_code == 200
        # Reads stay open outside production.
        assert (await http.get("/api/emergency/circuit-breakers")).status_code == 200


async def test_unset_token_answers_loopback_only(app: FastAPI) -> None:
    url = "/api/emergency/circuit-breaker/budget/reset"
    remote = httpx.ASGITransport(app=app, client=("203.0.113.9", 1))
    async with httpx.AsyncClient(transport=remote, base_url="http://t") as http:
        refused = await http.post(url, json={"force": True})
        assert refused.status_code == 403
        assert "loopback clients only" in refused.json()["detail"]
    local = httpx.ASGITransport(app=app, client=("::1", 1))
    async with httpx.AsyncClient(transport=local, base_url="http://t") as http:
        assert (await http.post(url, json={"force": True})).status_code == 200


async def test_breaker_metrics_follow_transitions(client: httpx.AsyncClient, app: FastAPI) -> None:
    await fail_budget_until_open(client, app)
    await client.post("/chat", json={"message": "budget report"})
    text = (await client.get("/metrics")).text
    assert 'ers_breaker_state{agent="budget",state="open"} 1' in text
    assert 'ers_breaker_state{agent="budget",state="closed"} 0' in text
    assert 'ers_breaker_transitions_total{agent="budget",from="closed",to="open"} 1.0' in text
    # Calls 3 to 6 were turned away, and so was call 2's retry after its own failures
    # tripped the breaker (that call still counts as a failure, not a rejection).
    assert 'ers_breaker_rejected_calls_total{agent="budget"} 5.0' in text
    assert 'ers_agent_calls_total{agent="budget",outcome="failure"} 2.0' in text
    assert 'ers_agent_calls_total{agent="budget",outcome="rejected"} 4.0' in text
    assert 'ers_fallbacks_total{agent="budget",kind="generic"} 6.0' in text


async def test_a_change_the_store_cannot_take_yet_says_so_and_is_saved_later(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    runtime = app.state.runtime
    store = runtime.stores.system_state.db
    store.pause(
        "a rollback is replacing this store (restore, safety snapshot, swap); retry shortly"
    )
    reply = await client.post(
        "/api/emergency/circuit-breaker/workout/force-open", json={"reason": "drill"}
    )
    assert reply.status_code == 200
    assert reply.json()["saved"] is False
    assert reply.json()["message"].endswith(
        "not saved across restarts yet (the system_state store is unavailable: a rollback is "
        "replacing this store (restore, safety snapshot, swap); retry shortly), retried in the "
        "background"
    )
    assert reply.json()["breaker"]["state"] == "forced_open"
    store.open()
    await runtime.state_keeper.flush()
    assert (await runtime.stores.system_state.get("breaker:workout"))["reason"] == "drill"


@pytest.mark.parametrize(
    ("action", "before", "setup"),
    [
        ("release", "forced_open", ("force-open", {"reason": "maintenance"})),
        ("disable", "closed", None),
        ("enable", "disabled", ("disable", None)),
    ],
)
async def test_an_action_without_options_refuses_a_body_with_some(
    client: httpx.AsyncClient, action: str, before: str, setup: tuple[str, Any] | None
) -> None:
    """Before: the body was not read, so a reason sent with a disable (or a body that was no
    JSON at all) was dropped without a word and the action done."""
    base = "/api/emergency/circuit-breaker/budget"
    if setup is not None:
        assert (await client.post(f"{base}/{setup[0]}", json=setup[1])).status_code == 200
    url = f"{base}/{action}"
    refused = await client.post(url, json={"reason": "whatever"})
    assert refused.status_code == 422, refused.text
    assert "reason" in refused.json()["detail"], refused.text
    json_type = {"content-type": "application/json"}
    garbled = await client.post(url, content=b"not json", headers=json_type)
    assert garbled.status_code == 422, garbled.text
    state = (await client.get("/api/emergency/circuit-breakers/budget")).json()["state"]
    assert state == before  # nothing was done
    done = await client.post(url, json={})  # an empty object, as no body: done
    assert done.status_code == 200, done.text
    state = (await client.get("/api/emergency/circuit-breakers/budget")).json()["state"]
    assert state != before
