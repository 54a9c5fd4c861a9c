"""Another service's spans sent to /v1/traces never act on ERS's agents, even when that
service is named like one: a service called ``budget`` whose call failed had the responder
force ERS's own budget agent open and serve its cached answers."""

from __future__ import annotations

import asyncio
import secrets
import time

import httpx


def export(service: str, message: str) -> dict:
    now = time.time_ns()
    span = {
        "traceId": secrets.token_hex(16),
        "spanId": secrets.token_hex(8),
        "name": "post ledger entry",
        "startTimeUnixNano": str(now - 9_000_000),
        "endTimeUnixNano": str(now),
        "status": {"code": 2, "message": message},
    }
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]}
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": [span]}]}]}


async def actions_taken(
    client: httpx.AsyncClient, component: str, count: int
) -> tuple[dict, list[dict]]:
    """The incident of ``component`` and the entries of the actions the responder took for
    it, once there are ``count`` (five seconds at most: it runs off the request path)."""
    incident: dict = {}
    done: list[dict] = []
    for _ in range(100):
        incidents = (await client.get(f"/api/emergency/incidents?component={component}")).json()
        if incidents["incidents"]:
            incident = incidents["incidents"][0]
            timeline = (await client.get(f"/api/emergency/incidents/{incident['id']}")).json()
            done = [e for e in timeline["timeline"] if e["kind"].startswith("action_")]
            if len(done) >= count:
                break
        await asyncio.sleep(0.05)
    return incident, done


async def test_a_service_named_like_an_agent_does_not_get_the_agent_isolated(
    client: httpx.AsyncClient,
) -> None:
    sent = await client.post("/v1/traces", json=export("budget", "connection refused by ledger"))
    assert sent.status_code == 200, sent.text
    incident, done = await actions_taken(client, "budget", 2)
    skipped = [e["message"] for e in done if e["kind"] == "action_skipped"]
    assert incident["sourceService"] == "budget"
    assert [m.split(" — ")[0] for m in skipped] == ["isolate: skipped", "serve_cached: skipped"]
    assert all("service budget" in m for m in skipped), skipped
    breaker = (await client.get("/api/emergency/circuit-breakers/budget")).json()
    assert breaker["state"] == "closed", breaker


async def test_a_span_sent_in_ers_name_does_not_get_an_agent_isolated(
    client: httpx.AsyncClient,
) -> None:
    """A span at /v1/traces is another process's, even when its service.name is ERS's own
    and it names an agent as its component: the responder forced ERS's nutrition agent open
    and restarted it for it."""
    export_ = export("ers", "AgentCrashed: the agent crashed")
    span = export_["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["attributes"] = [
        {"key": "ers.component", "value": {"stringValue": "nutrition"}},
        {"key": "ers.agent", "value": {"stringValue": "nutrition"}},
    ]
    sent = await client.post("/v1/traces", json=export_)
    assert sent.status_code == 200, sent.text
    _, done = await actions_taken(client, "nutrition", 2)
    assert [e["kind"] for e in done] == ["action_skipped", "action_skipped"], done
    assert all("service ers's, from /v1/traces" in e["message"] for e in done), done
    breaker = (await client.get("/api/emergency/circuit-breakers/nutrition")).json()
    assert breaker["state"] == "closed", breaker


async def test_another_services_critical_failure_leaves_ers_chat_and_state_alone(
    client: httpx.AsyncClient,
) -> None:
    """A critical span of another service (an unhandled error) put ERS's own chat into
    minimal mode (every user got short guidance, no agent called), and with automatic
    rollback on would have rolled ERS's state back, for a failure that was not ERS's."""
    export_ = export("checkout", "Unhandled exception: the process crashed")
    span = export_["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["attributes"] = [{"key": "ers.component", "value": {"stringValue": "core"}}]
    sent = await client.post("/v1/traces", json=export_)
    assert sent.status_code == 200, sent.text
    incident, done = await actions_taken(client, "core", 3)
    assert incident["response"]["protocol"] == "CRITICAL_SYSTEM_FAILURE", incident
    said = {e["message"].split(":")[0]: e for e in done}
    assert said["minimal_response_mode"]["kind"] == "action_skipped", done
    message = said["minimal_response_mode"]["message"]
    assert "acts on ERS's own chat and state, not on checkout" in message
    # Automatic rollback is off here: skipped all the same, not "a person must approve".
    assert said["rollback"]["kind"] == "action_skipped", done
    assert "acts on ERS's own chat and state, not on checkout" in said["rollback"]["message"]
    status = (await client.get("/api/emergency/status")).json()
    assert status["minimalMode"]["active"] is False, status
    reply = (await client.post("/chat", json={"message": "plan my meals", "userId": "u1"})).json()
    assert reply["emergency"] is False, reply
