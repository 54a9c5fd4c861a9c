"""One trace across two processes: `ers serve` calls the example agent (a real uvicorn process)
that traces itself with the official OTLP/HTTP exporter into ERS's intake; the failed chat's
kept trace holds ERS's agent span with the example agent's server span beneath it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ErsProcess, free_port, start_ers
from tests.example_agent import ExampleAgent, start_example_agent

pytest.importorskip("service.agents.config")

pytestmark = pytest.mark.integration

INTAKE_TOKEN = "intake-token-7c41e0"
EXAMPLE_SERVICE = "example-remote-agent"


@contextmanager
def ers_calling_the_example_agent(
    tmp_path: Path, agent_env: dict[str, str] | None = None, **helper: Any
) -> Iterator[tuple[ErsProcess, ExampleAgent]]:
    """``ers serve`` with the example agent as ``helper`` (its spec's keys and ``helper``),
    the agent tracing itself into ERS's intake (``agent_env`` added to its environment)."""
    intake_token_file = tmp_path / "intake-token"
    intake_token_file.write_text(INTAKE_TOKEN + "\n")
    ers_port = free_port()
    agent = start_example_agent(
        tmp_path / "example",
        env={
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{ers_port}/v1/traces",
            "EXAMPLE_AGENT_OTLP_TOKEN_FILE": str(intake_token_file),
            **(agent_env or {}),
        },
    )
    config = tmp_path / "ers.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "agents": {
                    "workout": {"kind": "python", "factory": "workout"},
                    "helper": {
                        "kind": "http",
                        "url": f"{agent.url}/chat",
                        "contract": "ers",
                        "timeout_s": 2,
                        **helper,
                    },
                },
                "agent_routes": {"workout": "helper"},
            }
        )
    )
    env = {"ERS_CONFIG": str(config), "ERS_INTAKE_TOKEN_FILE": str(intake_token_file)}
    try:
        ers = start_ers(tmp_path / "ers", env=env, port=ers_port)
    except BaseException:
        agent.stop()
        raise
    try:
        yield ers, agent
    finally:
        agent.stop()
        ers.stop()


@pytest.fixture
def ers_and_agent(tmp_path: Path) -> Iterator[tuple[ErsProcess, ExampleAgent]]:
    with ers_calling_the_example_agent(tmp_path) as both:
        yield both


def walk(nodes: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for node in nodes:
        yield node
        yield from walk(node["children"])


def agent_span_with_the_example_beneath(trace: dict[str, Any]) -> dict[str, Any] | None:
    """ERS's ``agent.helper`` span, once the example agent's spans of every attempt (each a
    client span of ERS's) are in its subtree: the agent exports them in batches, so those of
    the last attempt may come a moment after the others."""
    for node in walk(trace["spans"]):
        if node["name"] == "agent.helper" and node["service"] != EXAMPLE_SERVICE:
            attempts = [n for n in node["children"] if n["service"] != EXAMPLE_SERVICE]
            answered = [
                a for a in attempts if any(c["service"] == EXAMPLE_SERVICE for c in a["children"])
            ]
            if attempts and len(answered) == len(attempts):
                return node
    return None


def failed_chat_with_both_services_spans(
    ers: ErsProcess, agent: ExampleAgent
) -> tuple[str, dict[str, Any]]:
    """A workout chat whose call to the failing agent fell back: its trace id, and its
    kept ``agent.helper`` span once the example agent's spans are beneath it."""
    with httpx.Client(base_url=ers.url, timeout=30) as http:
        reply = http.post("/chat", json={"message": "make me a workout plan", "userId": "u"})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["agent"] == "helper" and body["emergency"] is True, body
        trace_id = body["traceId"]
        assert trace_id
        # The agent exports in batches; its spans arrive shortly after the reply.
        trace: dict[str, Any] = {}
        found = None
        deadline = time.monotonic() + 20
        while found is None and time.monotonic() < deadline:
            got = http.get(f"/api/emergency/traces/{trace_id}")
            if got.status_code == 200:
                trace = got.json()
                found = agent_span_with_the_example_beneath(trace)
            if found is None:
                time.sleep(0.2)
    assert found is not None, (trace, agent.log_path.read_text()[-2000:])
    return trace_id, found


def test_a_failed_remote_call_keeps_one_trace_with_both_services_spans(
    ers_and_agent: tuple[ErsProcess, ExampleAgent],
) -> None:
    ers, agent = ers_and_agent
    agent.fail_next("server_error", count=10)
    trace_id, found = failed_chat_with_both_services_spans(ers, agent)
    calls = agent.calls()
    assert calls and all(call["traceparent"].split("-")[1] == trace_id for call in calls)
    example_spans = [n for n in walk(found["children"]) if n["service"] == EXAMPLE_SERVICE]
    # One server span per attempt, each answered 503 and so an error of the agent's own.
    servers = [n for n in example_spans if n["attributes"].get("http.route") == "/chat"]
    assert servers and all(n["status"]["code"] == "ERROR" for n in servers), example_spans
    # Each attempt is a client span of ERS's own under the agent's span, and the agent's
    # server span is its child (the traceparent it sent).
    clients = [
        n
        for n in walk(found["children"])
        if n["service"] != EXAMPLE_SERVICE and n["name"].startswith("POST")
    ]
    assert len(clients) == len(servers), found
    beneath_clients = [n for c in clients for n in c["children"] if n["service"] == EXAMPLE_SERVICE]
    assert beneath_clients, clients
    assert INTAKE_TOKEN not in ers.log() + agent.log_path.read_text()


def test_an_api_key_header_the_agent_records_is_redacted_as_its_spans_arrive(
    tmp_path: Path,
) -> None:
    # The agent records every request header (its instrumentation writes x-api-key as
    # http.request.header.x_api_key), the key ERS sends among them.
    (tmp_path / "agent-key").write_text("sk-agent-key-30d1\n")
    with ers_calling_the_example_agent(
        tmp_path,
        {"OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": ".*"},
        auth_header="X-Api-Key",
        auth_file=str(tmp_path / "agent-key"),
    ) as (ers, agent):
        agent.fail_next("server_error", count=10)
        _, found = failed_chat_with_both_services_spans(ers, agent)
    servers = [
        n
        for n in walk(found["children"])
        if n["service"] == EXAMPLE_SERVICE and n["attributes"].get("http.route") == "/chat"
    ]
    assert servers, found
    assert all(n["attributes"]["http.request.header.x_api_key"] == ["REDACTED"] for n in servers), (
        servers
    )
    assert "sk-agent-key-30d1" not in json.dumps(found)


def test_the_agents_own_failure_is_an_incident_that_says_what_failed(
    ers_and_agent: tuple[ErsProcess, ExampleAgent],
) -> None:
    """The example agent's spans of a 503 carry a status code and no message (as HTTP
    instrumentations record a 5xx): its incident's message was empty, a blank MESSAGE in
    `ers incidents list` beside ERS's own incident of the same failure."""
    ers, agent = ers_and_agent
    agent.fail_next("server_error", count=10)
    failed_chat_with_both_services_spans(ers, agent)
    # The intake keeps a batch's spans in the trace first, then writes its incidents.
    incidents: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while not incidents and time.monotonic() < deadline:
        incidents = httpx.get(
            f"{ers.url}/api/emergency/incidents", params={"component": EXAMPLE_SERVICE}, timeout=10
        ).json()["incidents"]
        if not incidents:
            time.sleep(0.2)
    assert incidents, "the agent's own error spans make an incident of its own"
    for incident in incidents:
        assert incident["message"].endswith(": HTTP 503"), incident
        assert incident["message"].startswith(incident["spanName"]), incident
