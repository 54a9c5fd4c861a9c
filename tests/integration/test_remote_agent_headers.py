"""What passes between ERS and a remote agent besides the answer: a cookie the agent sets is
not sent with later chats (one client serves every user), the environment's proxy
variables divert nothing, credential headers captured on the attempt's span are redacted,
an auth header the agent rejects is read again from its file, an error body's free
text is not taken for an error code, and an answer that echoes the agent's key does not
hand it to the user. Against real uvicorn processes on loopback ports."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service.agents.base import AgentRequest
from service.agents.failure_kinds import CredentialsRejected, ServerError
from service.agents.remote import RemoteAgent
from service.agents.specs import HttpAgentSpec
from tests.example_agent import start_example_agent
from tests.processes import free_port, start_process

pytestmark = pytest.mark.integration

# An agent behind a gateway that keeps a session per user and names its key in a header.
SESSION_AGENT = """
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI()


@app.get("/ready")
async def ready() -> dict:
    return {}


@app.post("/failing")
async def failing(request: Request) -> JSONResponse:
    body = await request.json()
    # An error "code" of free text: the failing request's own id, on two lines.
    code = f"upstream failed for request {body['userId']}\\nretry later " + "x" * 5000
    return JSONResponse({"error": {"code": code}}, status_code=500)


@app.post("/echoing")
async def echoing(request: Request) -> JSONResponse:
    # A gateway that names, as its error code, the key it was given and turned down.
    if request.query_params.get("reject") == "header":
        return JSONResponse({"error": {"code": request.headers["x-api-key"]}}, status_code=401)
    return JSONResponse({"error": {"code": "bad-" + request.query_params["key"]}}, status_code=500)


@app.post("/challenge")
async def challenge(request: Request) -> JSONResponse:
    # A gateway that quotes the key it turned down in its challenge.
    said = f'Bearer error="invalid_token" {request.headers["authorization"]}'
    return JSONResponse({}, status_code=401, headers={"www-authenticate": said})


@app.post("/debug-echo/v1/chat/completions")
async def debug_echo_openai(request: Request) -> JSONResponse:
    # A gateway in debug mode that answers with what it was sent.
    said = f"sent {request.headers['authorization']} with {request.url.query}"
    choice = {"message": {"role": "assistant", "content": said}, "finish_reason": "stop"}
    return JSONResponse({"choices": [choice]})


@app.post("/debug-echo")
async def debug_echo(request: Request) -> JSONResponse:
    return JSONResponse({"response": f"sent {request.headers['x-api-key']} {request.url.query}"})


@app.post("/chat")
async def chat(request: Request) -> JSONResponse:
    body = await request.json()
    reply = JSONResponse({"response": f"cookie: {request.headers.get('cookie')}"})
    reply.set_cookie("session", f"sess-{body['userId']}-9d2e")
    reply.headers["x-api-key"] = "sk-resp-51c0"
    # A provider's own names for its credentials.
    reply.headers["x-session-token"] = "sk-sess-77aa"
    reply.headers["x-trace-signature"] = "sk-sig-3b1e"
    return reply
"""


@pytest.fixture(scope="module")
def session_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("session-agent")
    (workdir / "session_agent.py").write_text(SESSION_AGENT)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_process(
        [sys.executable, "-m", "uvicorn", "session_agent:app", "--host", "127.0.0.1"]
        + ["--port", str(port), "--log-level", "warning"],
        cwd=workdir,
        env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        log_path=workdir / "session-agent.log",
        ready_url=f"{url}/ready",
        what="the session agent",
    )
    try:
        yield f"{url}/chat"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


async def test_a_cookie_one_chats_reply_sets_is_not_sent_with_the_next_chat(
    session_agent: str,
) -> None:
    agent = RemoteAgent("remote", HttpAgentSpec(url=session_agent), default_timeout_s=5.0)
    try:
        first = await agent.handle(AgentRequest(message="hi", user_id="ann"))
        second = await agent.handle(AgentRequest(message="hi", user_id="bob"))
    finally:
        await agent.aclose()
    assert first.content == "cookie: None"
    # Bob's request went out without Ann's session.
    assert second.content == "cookie: None"


async def test_proxy_variables_of_the_environment_do_not_divert_the_call(
    session_agent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy would get the request without the auth header, or not answer at all: this one
    # is a closed port, and the agent is still reached directly.
    closed = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, closed)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    agent = RemoteAgent("remote", HttpAgentSpec(url=session_agent), default_timeout_s=5.0)
    try:
        reply = await agent.handle(AgentRequest(message="hi", user_id="ann"))
    finally:
        await agent.aclose()
    assert reply.content == "cookie: None"


async def test_credential_headers_captured_on_the_attempt_span_are_redacted(
    session_agent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", ".*")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE", ".*")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    agent = RemoteAgent(
        "remote",
        HttpAgentSpec(url=session_agent),
        default_timeout_s=5.0,
        tracer_provider=provider,
    )
    try:
        await agent.handle(AgentRequest(message="hi", user_id="ann"))
    finally:
        await agent.aclose()
    (span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    attributes = dict(span.attributes or {})
    assert attributes["http.response.header.set_cookie"] == ("[REDACTED]",)
    assert attributes["http.response.header.x_api_key"] == ("[REDACTED]",)
    assert attributes["http.response.header.x_session_token"] == ("[REDACTED]",)
    assert attributes["http.response.header.x_trace_signature"] == ("[REDACTED]",)
    # The others are captured as asked.
    assert attributes["http.response.header.content_type"] == ("application/json",)
    for secret in ("sess-ann", "sk-resp-51c0", "sk-sess-77aa", "sk-sig-3b1e"):
        assert secret not in repr(attributes)


async def test_a_key_rotated_in_the_auth_file_is_used_after_the_old_one_is_rejected(
    tmp_path: Path,
) -> None:
    expected = tmp_path / "agent-expects"
    expected.write_text("new-key-2b7e\n")
    example = start_example_agent(tmp_path / "example", expected)
    auth_file = tmp_path / "agent-auth"
    auth_file.write_text("Bearer old-key-91c4\n")
    agent = RemoteAgent(
        "remote",
        HttpAgentSpec(url=f"{example.url}/chat", auth_file=auth_file),
        default_timeout_s=5.0,
    )
    try:
        with pytest.raises(CredentialsRejected):
            await agent.handle(AgentRequest(message="hi", user_id="ann"))
        # The operator writes the new key, as the 401's message says.
        auth_file.write_text("Bearer new-key-2b7e\n")
        reply = await agent.handle(AgentRequest(message="hi", user_id="ann"))
        calls = example.calls()
    finally:
        await agent.aclose()
        example.stop()
    assert reply.content == "The example agent read: hi"
    assert [call["authorized"] for call in calls] == [False, True]


async def test_free_text_in_an_error_bodys_code_stays_out_of_the_failure_message(
    session_agent: str,
) -> None:
    url = session_agent.removesuffix("/chat") + "/failing"
    agent = RemoteAgent("remote", HttpAgentSpec(url=url), default_timeout_s=5.0)
    try:
        with pytest.raises(ServerError) as first:
            await agent.handle(AgentRequest(message="hi", user_id="ann"))
        with pytest.raises(ServerError) as second:
            await agent.handle(AgentRequest(message="hi", user_id="bob"))
    finally:
        await agent.aclose()
    # One line, the same for both: one incident, not one per request.
    assert str(first.value) == "agent 'remote' failed: HTTP 500"
    assert str(second.value) == str(first.value)


async def test_a_credential_an_error_code_echoes_stays_out_of_the_failure_message(
    session_agent: str, tmp_path: Path
) -> None:
    auth_file = tmp_path / "agent-auth"
    auth_file.write_text("sk-header-7f3a\n")
    auth_file.chmod(0o600)
    base = session_agent.removesuffix("/chat") + "/echoing?key=sk-query-c81d"
    failures = []
    for reject, kind in (("header", CredentialsRejected), ("query", ServerError)):
        spec = HttpAgentSpec(
            url=f"{base}&reject={reject}", auth_header="X-Api-Key", auth_file=auth_file
        )
        agent = RemoteAgent("remote", spec, default_timeout_s=5.0)
        try:
            with pytest.raises(kind) as failed:
                await agent.handle(AgentRequest(message="hi", user_id="ann"))
        finally:
            await agent.aclose()
        failures.append(str(failed.value))
    assert failures[0].startswith("credentials rejected: agent 'remote' answered HTTP 401 ("), (
        failures
    )
    assert failures[1] == "agent 'remote' failed: HTTP 500 (bad-REDACTED)", failures
    assert "sk-header-7f3a" not in repr(failures) and "sk-query-c81d" not in repr(failures)


async def test_a_key_a_response_header_echoes_stays_out_of_the_attempt_span(
    session_agent: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE", ".*")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    auth_file = tmp_path / "agent-auth"
    auth_file.write_text("Bearer sk-agent-4d10\n")
    url = session_agent.removesuffix("/chat") + "/challenge"
    spec = HttpAgentSpec(url=url, auth_file=auth_file)
    agent = RemoteAgent("remote", spec, default_timeout_s=5.0, tracer_provider=provider)
    try:
        with pytest.raises(CredentialsRejected):
            await agent.handle(AgentRequest(message="hi", user_id="ann"))
    finally:
        await agent.aclose()
    (span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert (span.attributes or {})["http.response.header.www_authenticate"] == (
        'Bearer error="invalid_token" REDACTED',
    )
    assert "sk-agent-4d10" not in span.to_json()


@pytest.mark.parametrize("contract", ["ers", "openai"])
async def test_an_answer_that_echoes_the_agents_key_reaches_the_user_without_it(
    session_agent: str, tmp_path: Path, contract: str
) -> None:
    auth_file = tmp_path / "agent-auth"
    auth_file.write_text("sk-header-5e0b\n" if contract == "ers" else "Bearer sk-bearer-2c9d\n")
    # A word of the query (team=support) is no credential: it stays in the answer.
    url = session_agent.removesuffix("/chat") + "/debug-echo?key=sk-query-a17f&team=support"
    header = {"ers": {"auth_header": "X-Api-Key"}, "openai": {"model": "m"}}[contract]
    spec = HttpAgentSpec(url=url, contract=contract, auth_file=auth_file, **header)
    agent = RemoteAgent("remote", spec, default_timeout_s=5.0)
    try:
        reply = await agent.handle(AgentRequest(message="hi", user_id="ann"))
    finally:
        await agent.aclose()
    assert (
        reply.content
        == {
            "ers": "sent REDACTED key=REDACTED&team=support",
            "openai": "sent REDACTED with key=REDACTED&team=support",
        }[contract]
    )
