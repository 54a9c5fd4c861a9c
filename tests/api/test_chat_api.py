"""The chat API through httpx's ASGI transport, with the app's real lifespan."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.resilience.guard import hash_user_id
from tests.store_writes import stored_turns


async def test_chat_answers_in_the_seed_shape(client: httpx.AsyncClient) -> None:
    reply = await client.post("/chat", json={"message": "plan my meals", "userId": "u1"})
    assert reply.status_code == 200
    body = reply.json()
    assert set(body) == {
        "response",
        "success",
        "confidence",
        "agent",
        "emergency",
        "incident",
        "systemState",
        "recovery",
        "traceId",
    }
    assert len(body["traceId"]) == 32
    assert body["agent"] == "nutrition"
    assert body["success"] is True
    assert 0 < body["confidence"] <= 1
    assert (body["emergency"], body["incident"], body["systemState"], body["recovery"]) == (
        False,
        None,
        "normal",
        None,
    )
    assert "your age" in body["response"]


async def test_profile_from_chat_then_meal_plan(client: httpx.AsyncClient) -> None:
    await client.post(
        "/chat",
        json={"message": "I am 30, 80 kg, 180 cm, male, moderately active", "userId": "u7"},
    )
    reply = await client.post("/chat", json={"message": "plan my meals", "userId": "u7"})
    assert "2759 kcal" in reply.json()["response"]
    profile = await client.get("/api/profiles/u7")
    assert profile.json()["weightKg"] == 80.0


async def test_profile_api_round_trip_and_bounds(client: httpx.AsyncClient) -> None:
    put = await client.put(
        "/api/profiles/u9", json={"age": 40, "weightKg": 70, "heightCm": 170, "sex": "female"}
    )
    assert put.status_code == 200 and put.json()["age"] == 40
    bad = await client.put("/api/profiles/u9", json={"age": -3})
    assert bad.status_code == 422 and "age" in bad.json()["detail"]
    unknown = await client.put("/api/profiles/u9", json={"shoeSize": 44})
    assert (
        unknown.status_code == 422 and "shoeSize is not a known field" in unknown.json()["detail"]
    )
    assert (await client.get("/api/profiles/nobody")).status_code == 404
    # The path's user is named as everywhere else in the API (it said "user_id").
    bad_id = await client.put("/api/profiles/bad%20id", json={"age": 40})
    assert bad_id.status_code == 422 and bad_id.json()["detail"].startswith("userId"), bad_id.text


async def test_default_user_is_anonymous(client: httpx.AsyncClient, app: FastAPI) -> None:
    reply = await client.post("/chat", json={"message": "budget report"})
    assert reply.status_code == 200
    turns = await stored_turns(app.state.runtime.stores, "anonymous")
    assert turns[-1].message == "budget report"
    # A client without a user at hand that sends null: before, a 422 "Input should be a
    # valid string" that did not say the field may be left out.
    reply = await client.post("/chat", json={"message": "spent $5 on tea", "userId": None})
    assert reply.status_code == 200, reply.text
    turns = await stored_turns(app.state.runtime.stores, "anonymous")
    assert turns[-1].message == "spent $5 on tea"


@pytest.mark.parametrize(
    "body,expected",
    [
        ({"message": ""}, "message is empty"),
        ({"message": "   \n\t "}, "message is empty"),
        ({"message": "x" * 4001}, "the limit is 4000"),
        ({"message": 42}, "message: Input should be a valid string"),
        ({"userId": "u1"}, "message is required"),
        ({"message": "hi", "userId": ""}, "userId"),
        (
            {"message": "hi", "userId": "../etc/passwd"},
            "userId: '../etc/passwd' is not a user id: ASCII letters, digits and _ . @ : - only",
        ),
        ({"message": "hi", "extra": 1}, "extra is not a known field"),
        ([1, 2], "must be a JSON object"),
    ],
)
async def test_bad_input_gets_422_with_a_reason(
    client: httpx.AsyncClient, body: object, expected: str
) -> None:
    reply = await client.post("/chat", json=body)
    assert reply.status_code == 422
    assert expected in reply.json()["detail"]
    # One shape, whether the body's validation or the route's own check refused it.
    assert reply.json()["error"] == "invalid request"
    assert reply.json()["detail"] == "; ".join(reply.json()["problems"])


async def test_malformed_json_gets_422(client: httpx.AsyncClient) -> None:
    reply = await client.post(
        "/chat", content=b'{"message": "hi",', headers={"content-type": "application/json"}
    )
    assert reply.status_code == 422
    assert "not valid JSON" in reply.json()["detail"]


async def test_json_sent_as_a_form_is_told_to_name_its_content_type(
    client: httpx.AsyncClient,
) -> None:
    # What `curl -d '{"message": "hi"}'` sends without -H.
    reply = await client.post(
        "/chat",
        content=b'{"message": "hi"}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert reply.status_code == 422
    assert "Content-Type: application/json" in reply.json()["detail"]
    unnamed = await client.post("/chat", content=b'{"message": "hi"}')
    assert unnamed.status_code == 422
    assert "Content-Type: application/json" in unnamed.json()["detail"]
    named = await client.post(
        "/chat", content=b'{"message": "hi"}', headers={"content-type": "application/json"}
    )
    assert named.status_code == 200


async def test_a_wrong_path_or_method_is_told_what_to_use(client: httpx.AsyncClient) -> None:
    nowhere = await client.get("/api/emergency/nowhere")
    assert nowhere.status_code == 404
    assert nowhere.json()["detail"].startswith("ERS has no route /api/emergency/nowhere")
    long = await client.get("/api/" + "x" * 5000)
    assert long.status_code == 404 and len(long.json()["detail"]) < 300
    wrong_method = await client.get("/chat")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["detail"] == "/chat does not take GET: use POST"
    # A path two routes serve names both (before: "use GET", the first route's alone).
    profile = await client.post("/api/profiles/u1", json={})
    assert profile.status_code == 405
    assert profile.json()["detail"] == "/api/profiles/u1 does not take POST: use GET, PUT"
    assert profile.headers["allow"] == "GET, PUT"
    simulate = await client.get("/api/emergency/simulate-error")
    assert simulate.headers["allow"] == "DELETE, POST", simulate.headers
    schema = await client.post("/openapi.json")
    assert schema.headers["allow"] == "GET, HEAD", schema.headers


async def test_agent_side_input_error_is_422_not_a_failure(client: httpx.AsyncClient) -> None:
    reply = await client.post("/chat", json={"message": "spent $99999999999 on shoes"})
    assert reply.status_code == 422
    assert "at most $1,000,000.00" in reply.json()["detail"]


async def test_store_failure_gets_503_and_the_process_keeps_serving(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    with app.state.runtime.stores.paused(["conversations"], "disk detached"):
        reply = await client.post("/chat", json={"message": "plan my meals"})
        assert reply.status_code == 503
        body = reply.json()
        assert body["component"] == "conversations"
        assert "Traceback" not in reply.text
    again = await client.post("/chat", json={"message": "plan my meals"})
    assert again.status_code == 200


async def test_probes(client: httpx.AsyncClient) -> None:
    assert (await client.get("/livez")).json() == {"status": "alive"}
    assert (await client.get("/readyz")).status_code == 200
    assert (await client.get("/docs")).status_code == 200
    schema = (await client.get("/openapi.json")).json()
    assert "/chat" in schema["paths"]


async def test_agent_spans_carry_agent_user_hash_and_degraded(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    exporter = InMemorySpanExporter()
    app.state.telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    await client.post("/chat", json={"message": "plan my meals", "userId": "alice"})
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert {"agent.router", "agent.nutrition"} <= set(spans)
    nutrition = spans["agent.nutrition"]
    assert nutrition.attributes["ers.agent"] == "nutrition"
    assert nutrition.attributes["ers.user_id"] == hash_user_id("alice")
    assert nutrition.attributes["ers.user_id"] != "alice"
    assert nutrition.attributes["ers.degraded"] is False
    assert nutrition.parent.span_id == spans["agent.router"].context.span_id
    # The HTTP server span from the FastAPI instrumentation is the root.
    server = [s for s in exporter.get_finished_spans() if s.kind.name == "SERVER"]
    assert server and spans["agent.router"].parent.span_id == server[0].context.span_id


async def test_metrics_count_agent_calls(client: httpx.AsyncClient) -> None:
    await client.post("/chat", json={"message": "plan my meals"})
    text = (await client.get("/metrics")).text
    assert 'ers_agent_calls_total{agent="nutrition",outcome="success"} 1.0' in text
    assert 'ers_agent_call_duration_seconds_count{agent="router"} 1.0' in text
    assert "http_server_request_duration_seconds" in text


async def test_every_agent_call_outcome_is_exported_at_0_from_start_up(
    client: httpx.AsyncClient,
) -> None:
    # increase() cannot see a series' first sample: AgentErrorRatioHigh would miss each
    # agent's first failures after every start if its series appeared only with them.
    text = (await client.get("/metrics")).text
    for agent in ("router", "nutrition", "workout", "budget"):
        for outcome in ("success", "failure", "timeout", "rejected", "user_error"):
            series = f'ers_agent_calls_total{{agent="{agent}",outcome="{outcome}"}} 0.0'
            assert series in text


async def test_http_metrics_nobody_reads_are_not_recorded(client: httpx.AsyncClient) -> None:
    assert (await client.post("/chat", json={"message": "hello"})).status_code == 200
    text = (await client.get("/metrics")).text
    assert "http_server_request_duration_seconds_bucket" in text
    assert "http_server_active_requests" not in text
    assert "http_server_request_body_size" not in text


async def test_a_profile_field_sent_as_null_is_emptied(client: httpx.AsyncClient) -> None:
    """Before: null meant "leave as it is", so a wrong goal or level could be replaced but
    never unset; a field left out still keeps its value."""
    body = {"age": 40, "goal": "lose", "level": "advanced", "equipment": ["barbell"]}
    assert (await client.put("/api/profiles/u10", json=body)).status_code == 200
    put = await client.put("/api/profiles/u10", json={"goal": None, "equipment": None})
    assert put.status_code == 200, put.text
    profile = (await client.get("/api/profiles/u10")).json()
    assert (profile["goal"], profile["equipment"]) == (None, []), profile
    assert (profile["age"], profile["level"]) == (40, "advanced"), profile


async def test_a_chat_the_stop_cuts_short_is_a_503_and_no_incident(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """The server's stop, its grace for requests run out, cancels the chat: an operator's
    doing, which opened a medium incident 'POST /chat: HTTP 503' for every chat it cut."""

    async def cut(*args: object, **kwargs: object) -> None:
        raise asyncio.CancelledError  # as the server's stop delivers it

    app.state.runtime.chat.chat = cut
    reply = await client.post("/chat", json={"message": "make me a plan", "userId": "ann"})
    assert reply.status_code == 503, reply.text
    assert reply.headers["Retry-After"] == "5"
    await asyncio.sleep(0.3)  # an error span would have been classified by now
    incidents = (await client.get("/api/emergency/incidents")).json()["incidents"]
    assert incidents == [], [(i["spanName"], i["message"]) for i in incidents]
