"""A remote agent behind the real guard, against the example agent as a real uvicorn process:
per failure kind, the attempts the agent saw, what the breaker counted, the fallback, the
cooldown, the span attributes and the incident; the traceparent it received; the auth
secret nowhere in spans, logs or replies."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from service.agents.base import AgentReply, AgentRequest
from service.agents.remote import RemoteAgent
from service.agents.specs import HttpAgentSpec
from service.chat.team import Team
from service.errors import UserInputError
from service.incidents.service import UNCLASSIFIED_ROUTES, not_an_incident
from service.incidents.store import IncidentStore
from service.resilience.breaker import BreakerConfig
from service.resilience.breaker_events import BreakerEvent, BreakerEventKind
from service.resilience.guard import GuardedAgent
from service.resilience.guard_config import GuardConfig
from service.resilience.instruments import AgentInstruments
from telemetry.classifier import load_rules
from telemetry.incident_processor import IncidentProcessor
from telemetry.span_record import SpanRecord
from tests.conftest import free_port
from tests.example_agent import ExampleAgent, running_example_agent

pytestmark = pytest.mark.integration

SECRET = "s3cret-token-7f1c9a"
GUIDANCE = "The remote agent is away; here is general guidance."


@pytest.fixture(scope="module")
def example_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleAgent]:
    with running_example_agent(tmp_path_factory.mktemp("example-agent"), SECRET) as agent:
        yield agent


@pytest.fixture
def agent_side(example_agent: ExampleAgent) -> ExampleAgent:
    example_agent.forget()
    return example_agent


@pytest.fixture
def auth_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent-auth"
    path.write_text(f"Bearer {SECRET}\n")
    return path


@dataclass
class Rig:
    guard: GuardedAgent
    agent: RemoteAgent
    spans: InMemorySpanExporter
    provider: TracerProvider
    breaker_failures: list[BreakerEvent] = field(default_factory=list)

    async def ask(self, message: str = "what should I eat before a run?") -> AgentReply:
        return await self.guard.handle(AgentRequest(message=message, user_id="user-1"))

    def agent_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == "agent.remote"]

    def client_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.kind is SpanKind.CLIENT]


@pytest.fixture
async def rig_factory(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Rig] = []

    def make(
        url: str,
        *,
        guard: GuardConfig | None = None,
        provider: TracerProvider | None = None,
        instruments: AgentInstruments | None = None,
        **spec: Any,
    ) -> Rig:
        exporter = InMemorySpanExporter()
        provider = provider or TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        team = Team(
            tracer=provider.get_tracer("test"),
            instruments=instruments,
            faults=None,
            breaker_config=BreakerConfig(ignore_exceptions=(UserInputError,)),
            guard_config=guard
            or GuardConfig(timeout_s=3.0, total_budget_s=5.0, backoff_initial_s=0.01),
        )
        agent = RemoteAgent(
            "remote",
            HttpAgentSpec(url=url, **spec),
            default_timeout_s=3.0,
            tracer_provider=provider,
        )
        rig = Rig(team.protect(agent, guidance=GUIDANCE), agent, exporter, provider)
        rig.guard.breaker.subscribe(rig.breaker_failures.append, [BreakerEventKind.ERROR_RECORDED])
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.agent.aclose()


def chat_url(agent: ExampleAgent) -> str:
    return f"{agent.url}/chat"


def attempts(agent: ExampleAgent) -> int:
    return len(agent.calls())


def assert_fell_back(reply: AgentReply) -> None:
    assert reply.degraded and not reply.success
    assert reply.content == GUIDANCE


def failure_attributes(rig: Rig) -> dict[str, Any]:
    (span,) = rig.agent_spans()
    assert span.status.status_code is StatusCode.ERROR
    return dict(span.attributes or {})


async def fallbacks_and_incidents(
    rig_factory: Any, tmp_path: Path, calls: int, url: str, **spec: Any
) -> tuple[Rig, list[Any], int]:
    """``calls`` asks that each fall back, through the incident pipeline on a store of its
    own: the rig, and the incidents they made with their total."""
    store = IncidentStore(tmp_path / "incidents.db")
    processor = IncidentProcessor(store, load_rules(), ignore=not_an_incident(UNCLASSIFIED_ROUTES))
    provider = TracerProvider()
    provider.add_span_processor(processor)
    rig = rig_factory(url, provider=provider, **spec)
    try:
        for _ in range(calls):
            assert_fell_back(await rig.ask())
        assert processor.force_flush(10_000)
        incidents, total = store.list()
    finally:
        processor.shutdown()
    return rig, incidents, total


async def test_an_ers_contract_answer_carries_the_chats_trace_to_the_agent(
    rig_factory: Any, agent_side: ExampleAgent, auth_file: Path
) -> None:
    rig = rig_factory(chat_url(agent_side), auth_file=auth_file)
    tracer = rig.provider.get_tracer("test")
    with tracer.start_as_current_span("chat") as chat:
        reply = await rig.ask("hello there")
    trace_id = format(chat.get_span_context().trace_id, "032x")

    assert not reply.degraded and reply.success
    assert reply.content == "The example agent read: hello there"
    assert reply.confidence == 0.9
    (call,) = agent_side.calls()
    assert call["authorized"] is True
    version, received_trace_id, parent_span_id, _flags = call["traceparent"].split("-")
    assert (version, received_trace_id) == ("00", trace_id)
    assert call["traceId"] == trace_id
    # The attempt is a client span under agent.remote, and it is the span the agent was
    # told it is called from.
    (client,) = rig.client_spans()
    (agent_span,) = rig.agent_spans()
    assert client.parent is not None and client.parent.span_id == agent_span.context.span_id
    assert format(client.context.span_id, "016x") == parent_span_id
    assert agent_span.parent is not None
    assert agent_span.parent.span_id == chat.get_span_context().span_id
    # httpx is not patched for everyone: the agent's spans are its own.
    assert not HTTPXClientInstrumentor().is_instrumented_by_opentelemetry


async def test_an_openai_contract_url_gets_one_path_and_the_model(
    rig_factory: Any, agent_side: ExampleAgent, auth_file: Path
) -> None:
    rig = rig_factory(f"{agent_side.url}/", contract="openai", model="m-1", auth_file=auth_file)
    reply = await rig.ask("plan my week")

    assert not reply.degraded
    assert reply.content == "The example agent read: plan my week"
    assert rig.agent.url == f"{agent_side.url}/v1/chat/completions"
    assert [call["contract"] for call in agent_side.calls()] == ["openai"]


async def test_an_openai_contract_url_keeps_its_query_after_the_path(
    rig_factory: Any, agent_side: ExampleAgent, auth_file: Path
) -> None:
    # Some LLM APIs take their key in the query string: the path goes before it.
    rig = rig_factory(
        f"{agent_side.url}/?key=k123", contract="openai", model="m-1", auth_file=auth_file
    )
    reply = await rig.ask("plan my week")

    assert not reply.degraded
    assert reply.content == "The example agent read: plan my week"
    assert rig.agent.url == f"{agent_side.url}/v1/chat/completions?key=k123"


async def test_server_errors_are_retried_and_count_against_the_breaker(
    rig_factory: Any, agent_side: ExampleAgent, auth_file: Path
) -> None:
    rig = rig_factory(chat_url(agent_side), auth_file=auth_file)
    agent_side.fail_next("server_error", count=2)
    reply = await rig.ask()

    assert not reply.degraded
    assert attempts(agent_side) == 3
    assert len(rig.breaker_failures) == 2
    (span,) = rig.agent_spans()
    assert span.attributes is not None and span.attributes["ers.attempts"] == 3


async def test_server_errors_past_the_attempts_fall_back_with_their_kind_and_status(
    rig_factory: Any, agent_side: ExampleAgent, auth_file: Path
) -> None:
    rig = rig_factory(chat_url(agent_side), auth_file=auth_file)
    agent_side.fail_next("server_error", count=10)
    reply = await rig.ask()

    assert_fell_back(reply)
    assert attempts(agent_side) == 3
    assert len(rig.breaker_failures) == 3
    attributes = failure_attributes(rig)
    assert attributes["ers.failure.kind"] == "server_error"
    assert attributes["http.response.status_code"] == 503
    # Each attempt's client span says the same, and none of them is an incident of its own.
    clients = rig.client_spans()
    assert len(clients) == 3
    assert {c.attributes["ers.failure.kind"] for c in clients} == {"server_error"}  # type: ignore[index]
    assert all(c.attributes.get("ers.not_an_incident") for c in clients)  # type: ignore[union-attr]


async def test_a_slow_answer_times_out_and_the_retry_answers(
    rig_factory: Any, agent_side: ExampleAgent, auth_file: Path
) -> None:
    rig = rig_factory(chat_url(agent_side), auth_file=auth_file, timeout_s=0.3)
    agent_side.fail_next("slow", count=1, delayS=2.0)
    reply = await rig.ask()

    assert not reply.degraded
    assert attempts(agent_side) == 2
    (failure,) = rig.breaker_failures
    assert "RemoteTimeout" in failure.reason
    events = [e for e in rig.agent_spans()[0].events if e.name == "exception"]
    assert [e.attributes["ers.failure.kind"] for e in events] == ["timeout"]  # type: ignore[index]


async def test_an_attempt_the_guards_deadline_cuts_is_an_error_span(
    rig_factory: Any, agent_side: ExampleAgent, auth_file: Path
) -> None:
    # The guard's timeout is shorter than the client's: the guard cancels the attempt while
    # it waits for the answer.
    guard = GuardConfig(timeout_s=0.3, total_budget_s=5.0, backoff_initial_s=0.01)
    rig = rig_factory(chat_url(agent_side), auth_file=auth_file, guard=guard)
    agent_side.fail_next("slow", count=1, delayS=2.0)
    reply = await rig.ask()

    assert not reply.degraded
    cut, answered = rig.client_spans()
    assert cut.status.status_code is StatusCode.ERROR
    assert cut.attributes is not None and cut.attributes["error.type"] == "CancelledError"
    assert "http.response.status_code" not in cut.attributes
    assert answered.status.status_code is StatusCode.UNSET


async def test_a_hanging_agent_the_guard_cuts_is_a_timeout_for_the_rules(
    rig_factory: Any, agent_side: ExampleAgent, auth_file: Path
) -> None:
    """The guard's deadline and the agent's own timeout are as long, and the guard's ends
    the call first: the kind, `timeout` for no answer within timeout_s, was missing."""
    guard = GuardConfig(timeout_s=0.3, total_budget_s=0.5, backoff_initial_s=0.01)
    rig = rig_factory(chat_url(agent_side), auth_file=auth_file, guard=guard)
    agent_side.fail_next("slow", count=5, delayS=3.0)
    assert_fell_back(await rig.ask())

    (span,) = rig.agent_spans()
    attributes = failure_attributes(rig)
    assert attributes["error.type"] == "TimeoutError"
    assert attributes["ers.failure.kind"] == "timeout"
    found = load_rules().classify(SpanRecord.from_readable_span(span))
    assert found is not None and found.rule == "remote-timeout", found


async def test_an_unreachable_agent_is_retried_then_falls_back(rig_factory: Any) -> None:
    rig = rig_factory(f"http://127.0.0.1:{free_port()}/chat")
    reply = await rig.ask()

    assert_fell_back(reply)
    assert len(rig.client_spans()) == 3
    assert len(rig.breaker_failures) == 3
    assert failure_attributes(rig)["ers.failure.kind"] == "connection"


async def test_a_connection_reset_names_what_happened(rig_factory: Any) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65_536)
        # Linger 0: the close sends a TCP reset, as a crashing peer or a proxy does.
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await asyncio.start_server(reset, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        rig = rig_factory(f"http://127.0.0.1:{port}/chat")
        reply = await rig.ask()

    assert_fell_back(reply)
    assert failure_attributes(rig)["ers.failure.kind"] == "connection"
    # httpx's error has no text of its own: the message still says what happened.
    assert str(rig.guard.breaker.snapshot()["lastError"]).endswith(
        "could not be reached: ReadError: the connection broke (reset or closed by the agent)"
    )


async def test_a_rate_limit_that_fits_the_budget_is_waited_out(
    rig_factory: Any, agent_side: ExampleAgent, auth_file: Path
) -> None:
    rig = rig_factory(chat_url(agent_side), auth_file=auth_file)  # a 5 s budget
    agent_side.fail_next("rate_limit", count=1, retryAfter="2")
    started = time.monotonic()
    reply = await rig.ask()
    waited = time.monotonic() - started

    assert not reply.degraded
    assert [call["mode"] for call in agent_side.calls()] == ["rate_limit", None]
    assert rig.breaker_failures == []
    (retry,) = [e for e in rig.agent_spans()[0].events if e.name == "retry"]
    assert retry.attributes is not None and retry.attributes["ers.backoff_s"] == 2.0
    assert waited >= 2.0  # the retry waited the agent's Retry-After out, not less
    assert rig.guard.available_now()


@pytest.mark.parametrize("as_date", [False, True], ids=["seconds", "http-date"])
async def test_a_rate_limit_longer_than_the_budget_cools_the_agent_down(
    rig_factory: Any, agent_side: ExampleAgent, auth_file: Path, as_date: bool
) -> None:
    rig = rig_factory(chat_url(agent_side), auth_file=auth_file)
    retry_after = email.utils.formatdate(time.time() + 30, usegmt=True) if as_date else "30"
    agent_side.fail_next("rate_limit", count=5, retryAfter=retry_after)
    first = await rig.ask()

    assert_fell_back(first)
    assert attempts(agent_side) == 1
    assert rig.breaker_failures == []
    assert rig.guard.breaker.state.value == "closed"
    attributes = failure_attributes(rig)
    assert attributes["ers.failure.kind"] == "rate_limit"
    assert attributes["http.response.status_code"] == 429
    assert 0 < attributes["ers.cooldown_s"] <= 30
    assert not rig.guard.available_now()

    rig.spans.clear()
    second = await rig.ask()
    assert_fell_back(second)
    assert attempts(agent_side) == 1  # the cooldown kept the call from the agent
    (span,) = rig.agent_spans()
    assert span.attributes is not None and span.attributes["ers.cooldown"] is True
    assert rig.client_spans() == []


async def test_a_disabled_breaker_lets_calls_through_a_cooldown(
    rig_factory: Any, agent_side: ExampleAgent, auth_file: Path
) -> None:
    """A disabled breaker is the operator's word that calls are to reach the agent: its
    cooldown held them back (`disabled, cooling down`) all the same."""
    rig = rig_factory(chat_url(agent_side), auth_file=auth_file)
    rig.guard.breaker.disable(source="admin:test")
    agent_side.fail_next("rate_limit", count=1, retryAfter="120")
    assert_fell_back(await rig.ask())
    assert rig.guard.cooldown_remaining() == 0
    assert rig.guard.available_now()

    reply = await rig.ask()
    assert not reply.degraded
    assert attempts(agent_side) == 2  # the second chat reached the agent

    rig.guard.breaker.enable(source="admin:test")  # guarded again: the agent's Retry-After holds
    assert 0 < rig.guard.cooldown_remaining() <= 120
    assert (await rig.ask()).degraded  # its last answer, from the fallback
    assert attempts(agent_side) == 2


async def test_calls_reach_the_agent_again_once_its_cooldown_is_over(
    rig_factory: Any, agent_side: ExampleAgent, auth_file: Path
) -> None:
    rig = rig_factory(
        chat_url(agent_side),
        auth_file=auth_file,
        guard=GuardConfig(timeout_s=0.5, total_budget_s=0.8, backoff_initial_s=0.01),
    )
    agent_side.fail_next("rate_limit", count=1, retryAfter="1")
    assert_fell_back(await rig.ask())
    assert not rig.guard.available_now()

    deadline = time.monotonic() + 10
    while not rig.guard.available_now() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    reply = await rig.ask()
    assert not reply.degraded
    assert attempts(agent_side) == 2


async def test_rejected_credentials_are_not_retried_and_make_one_critical_incident(
    rig_factory: Any, agent_side: ExampleAgent, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-auth"
    wrong.write_text("Bearer not-the-token\n")
    rig, incidents, total = await fallbacks_and_incidents(
        rig_factory, tmp_path, 3, chat_url(agent_side), auth_file=wrong
    )

    assert attempts(agent_side) == 3  # one per call: never retried
    assert len(rig.breaker_failures) == 3
    attributes = dict(rig.agent_spans()[0].attributes or {})
    assert attributes["ers.failure.kind"] == "auth"
    assert attributes["http.response.status_code"] == 401
    assert total == 1
    (incident,) = incidents
    assert incident.severity == "critical"
    assert incident.rule == "remote-credentials-rejected"
    assert incident.component == "remote"
    assert incident.count == 3
    assert incident.message.startswith("credentials rejected: agent 'remote'")


@pytest.mark.parametrize(
    ("query", "auth", "to_check"),
    [
        ("", True, "check the file its auth_file setting names"),
        ("?key=not-the-token", False, "check the key in the query of its url setting"),
        ("", False, "it was sent none"),
    ],
)
async def test_rejected_credentials_name_where_the_agents_credentials_come_from(
    rig_factory: Any,
    agent_side: ExampleAgent,
    tmp_path: Path,
    query: str,
    auth: bool,
    to_check: str,
) -> None:
    wrong = tmp_path / "wrong-auth"
    wrong.write_text("Bearer not-the-token\n")
    spec = {"auth_file": wrong} if auth else {}
    _, incidents, _ = await fallbacks_and_incidents(
        rig_factory, tmp_path, 1, chat_url(agent_side) + query, **spec
    )

    (incident,) = incidents
    assert incident.rule == "remote-credentials-rejected"
    assert to_check in incident.message
    assert "not-the-token" not in incident.message


async def test_a_spent_quota_is_not_retried_or_waited_out_and_makes_one_incident(
    rig_factory: Any, agent_side: ExampleAgent, auth_file: Path, tmp_path: Path
) -> None:
    """OpenAI answers a spent quota with 429 too, without Retry-After: taken as a rate limit,
    each call was retried and no breaker ever stopped the calls that could only fail."""
    agent_side.fail_next("quota", count=3)
    rig, incidents, total = await fallbacks_and_incidents(
        rig_factory, tmp_path, 2, chat_url(agent_side), auth_file=auth_file
    )

    assert attempts(agent_side) == 2  # one per call: never retried
    assert len(rig.breaker_failures) == 2
    assert rig.guard.cooldown_remaining() == 0
    for span in rig.agent_spans():
        assert span.status.status_code is StatusCode.ERROR
        attributes = dict(span.attributes or {})
        assert attributes["ers.failure.kind"] == "quota"
        assert attributes["http.response.status_code"] == 429
    assert total == 1
    (incident,) = incidents
    assert (incident.rule, incident.severity, incident.count) == (
        "remote-quota-exhausted",
        "high",
        2,
    )
    assert "quota or billing limit is spent" in incident.message


async def test_a_context_window_overflow_falls_back_without_a_retry_or_a_breaker_failure(
    rig_factory: Any, agent_side: ExampleAgent, auth_file: Path
) -> None:
    rig = rig_factory(agent_side.url, contract="openai", model="m-1", auth_file=auth_file)
    agent_side.fail_next("context_length", count=1)
    reply = await rig.ask()

    assert_fell_back(reply)
    assert attempts(agent_side) == 1
    assert rig.breaker_failures == []
    attributes = failure_attributes(rig)
    assert attributes["ers.failure.kind"] == "context_length"
    assert attributes["http.response.status_code"] == 400


@pytest.mark.parametrize("mode", ["malformed", "not_json", "nested", "oversized"])
async def test_a_reply_that_breaks_the_contract_is_not_retried_and_counts(
    rig_factory: Any, agent_side: ExampleAgent, auth_file: Path, mode: str
) -> None:
    rig = rig_factory(chat_url(agent_side), auth_file=auth_file)
    agent_side.fail_next(mode, count=1)
    reply = await rig.ask()

    assert_fell_back(reply)
    assert attempts(agent_side) == 1
    assert len(rig.breaker_failures) == 1
    assert failure_attributes(rig)["ers.failure.kind"] == "bad_response"
    (attempt,) = rig.client_spans()
    assert (attempt.attributes or {})["ers.failure.kind"] == "bad_response"


async def test_the_auth_secret_is_in_no_span_log_or_reply(
    rig_factory: Any,
    agent_side: ExampleAgent,
    auth_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An operator asks the instrumentation to record request headers, Authorization too.
    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", "authorization,content-type"
    )
    caplog.set_level(logging.DEBUG)
    rig = rig_factory(chat_url(agent_side), auth_file=auth_file)
    replies = [await rig.ask()]
    agent_side.fail_next("server_error", count=3)
    replies.append(await rig.ask())

    assert [call["authorized"] for call in agent_side.calls()] == [True] * 4
    assert not replies[0].degraded and replies[1].degraded
    clients = rig.client_spans()
    # The capture is on: it recorded the content type, and saw no Authorization header.
    assert clients[0].attributes is not None
    assert clients[0].attributes["http.request.header.content_type"] == ("application/json",)
    assert "http.request.header.authorization" not in clients[0].attributes
    exported = "\n".join(span.to_json() for span in rig.spans.get_finished_spans())
    assert "s3cret" not in exported
    assert "s3cret" not in caplog.text
    assert all("s3cret" not in json.dumps(r.data) + r.content for r in replies)
    assert "s3cret" not in rig.guard.breaker.snapshot()["lastError"]  # type: ignore[operator]


async def test_a_confidence_past_any_float_is_a_bad_response_not_a_crash(
    rig_factory: Any,
) -> None:
    # An integer of 400 digits is valid JSON; taken to a float it overflows.
    body = b'{"response": "hi", "confidence": 1' + b"0" * 400 + b"}"
    asked: list[bytes] = []
    async with answering(body, asked) as url:
        rig = rig_factory(f"{url}/chat")
        reply = await rig.ask()

    assert_fell_back(reply)
    assert len(asked) == 1  # not retried: the same request gets the same reply
    assert failure_attributes(rig)["ers.failure.kind"] == "bad_response"
    assert str(rig.guard.breaker.snapshot()["lastError"]).endswith(
        "agent 'remote' broke the ers contract: \"confidence\" must be a number from 0 to 1"
    )


async def test_a_rate_limit_or_a_refused_request_is_no_failure_in_the_call_metrics(
    rig_factory: Any, agent_side: ExampleAgent, auth_file: Path
) -> None:
    """Neither counts against the breaker: counted as failures, they made AgentErrorRatioHigh
    isolate an agent that was only rate limited or asked too much."""
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    instruments = AgentInstruments.create(meter, CollectorRegistry())
    rig = rig_factory(chat_url(agent_side), auth_file=auth_file, instruments=instruments)
    agent_side.fail_next("context_length", count=1)
    assert_fell_back(await rig.ask())
    agent_side.fail_next("rate_limit", count=1, retryAfter="30")
    assert_fell_back(await rig.ask())

    [metric] = [
        m
        for m in reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics
        if m.name == "ers_agent_calls"
    ]
    counted = {
        p.attributes["outcome"]: p.value
        for p in metric.data.data_points
        if p.attributes is not None and p.attributes["agent"] == "remote" and p.value
    }
    assert counted == {"refused": 2}


@asynccontextmanager
async def answering(
    document: dict[str, Any] | bytes, asked: list[bytes], status: int = 200
) -> AsyncIterator[str]:
    """A raw HTTP server on a free loopback port that answers every request ``status`` with
    ``document`` (as JSON, or the bytes given), each request's bytes put in ``asked``;
    yields its base URL."""
    body = document if isinstance(document, bytes) else json.dumps(document).encode()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked.append(await reader.read(65_536))
        head = (
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
        )
        writer.write(head.encode() + b"\r\nconnection: close\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def completion(
    content: str | list[Any] | None, finish_reason: str = "stop", **message: Any
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m-1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": finish_reason,
            }
        ],
    }


def counted_calls(reader: InMemoryMetricReader) -> dict[str, int]:
    [metric] = [
        m
        for m in reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics
        if m.name == "ers_agent_calls"
    ]
    return {
        p.attributes["outcome"]: p.value
        for p in metric.data.data_points
        if p.attributes is not None and p.value
    }


@pytest.mark.parametrize(
    ("document", "kind"),
    [
        (completion(None, refusal="I'm sorry, I can't help with that."), "refusal"),
        (completion(None, "content_filter"), "content_filter"),
        (completion("Here is how to", "content_filter"), "content_filter"),
        (completion("A full plan: squats, push-", "length"), "truncated"),
        (completion("A full plan: squats, push-", "model_length"), "truncated"),
    ],
)
async def test_a_completion_with_no_whole_answer_falls_back_without_a_breaker_failure(
    rig_factory: Any, document: dict[str, Any], kind: str
) -> None:
    """A model's refusal and a content filter's finish were bad_response (breaker failures,
    outcome failure, isolating an agent that was only asked what it declines); a partly
    filtered answer, and one cut off at the token limit, went to the user as whole ones."""
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    instruments = AgentInstruments.create(meter, CollectorRegistry())
    asked: list[bytes] = []
    async with answering(document, asked) as url:
        rig = rig_factory(url, contract="openai", model="m-1", instruments=instruments)
        reply = await rig.ask()

    assert_fell_back(reply)
    assert len(asked) == 1  # not retried
    assert rig.breaker_failures == []
    attributes = failure_attributes(rig)
    assert attributes["ers.failure.kind"] == kind
    assert attributes["http.response.status_code"] == 200
    (attempt,) = rig.client_spans()
    assert (attempt.attributes or {})["ers.failure.kind"] == kind
    assert counted_calls(reader) == {"refused": 1}


async def test_an_answer_its_server_cut_off_on_a_failure_is_retried_as_a_server_error(
    rig_factory: Any,
) -> None:
    """finish_reason error (Mistral): the generation stopped on the server's failure, which
    vLLM answers with a 500. The part written before it went to the user as a whole answer
    ("emergency": false), with no retry and no breaker failure."""
    asked: list[bytes] = []
    async with answering(completion("A full plan: squats, push-", "error"), asked) as url:
        rig = rig_factory(url, contract="openai", model="m-1")
        reply = await rig.ask()

    assert_fell_back(reply)
    assert len(asked) == 3  # retried, as a 5xx is
    assert len(rig.breaker_failures) == 3
    attributes = failure_attributes(rig)
    assert attributes["ers.failure.kind"] == "server_error"
    assert attributes["http.response.status_code"] == 200


async def test_a_tool_call_falls_back_and_counts_against_the_breaker(rig_factory: Any) -> None:
    """ERS sends no tools: a model asking for one is set up so by its server or a proxy, for
    every question that calls for the tool. It was a bad_response saying only that the
    content was not a string."""
    tool_call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    asked: list[bytes] = []
    async with answering(completion(None, "tool_calls", tool_calls=[tool_call]), asked) as url:
        rig = rig_factory(url, contract="openai", model="m-1")
        reply = await rig.ask()

    assert_fell_back(reply)
    assert len(asked) == 1
    assert len(rig.breaker_failures) == 1
    assert failure_attributes(rig)["ers.failure.kind"] == "tool_calls"
    assert "ERS sends no tools" in str(rig.guard.breaker.snapshot()["lastError"])


async def test_content_as_a_list_of_parts_answers_with_its_text_parts(rig_factory: Any) -> None:
    """Mistral's reasoning models answer content as a list of chunks, the thinking beside the
    answer's text: every such answer was a bad_response ("content is not a string") and a
    breaker failure, and the fallback answered."""
    thinking = {"type": "thinking", "thinking": [{"type": "text", "text": "Squats or lunges?"}]}
    parts = [
        thinking,
        {"type": "text", "text": "Squats, "},
        {"type": "text", "text": "then a run."},
    ]
    asked: list[bytes] = []
    async with answering(completion(parts), asked) as url:
        rig = rig_factory(url, contract="openai", model="m-1")
        reply = await rig.ask()
    assert reply.success and not reply.degraded
    assert reply.content == "Squats, then a run."
    assert rig.breaker_failures == []

    async with answering(completion([thinking]), asked) as url:
        rig = rig_factory(url, contract="openai", model="m-1")
        assert_fell_back(await rig.ask())
    assert len(asked) == 2  # not retried
    assert len(rig.breaker_failures) == 1
    assert failure_attributes(rig)["ers.failure.kind"] == "bad_response"
    last_error = str(rig.guard.breaker.snapshot()["lastError"])
    assert last_error.endswith(
        "is a list of content parts, none of type text: no answer, only reasoning or parts "
        "that are not text"
    )
    assert "Squats" not in last_error


async def test_an_error_object_answered_with_a_200_is_read_by_its_error_code(
    rig_factory: Any,
) -> None:
    """A proxy that answers a failed request 200 with an error object: its content filter's
    code was a bad_response (a breaker failure), and the message said only that no
    choices[0].message.content came."""
    filtered = {"error": {"message": "filtered", "code": "content_filter"}}
    unknown = {"error": {"message": "No models available", "type": "invalid_request_error"}}
    asked: list[bytes] = []
    async with answering(filtered, asked) as url:
        rig = rig_factory(url, contract="openai", model="m-1")
        assert_fell_back(await rig.ask())
    assert rig.breaker_failures == []
    assert failure_attributes(rig)["ers.failure.kind"] == "content_filter"

    async with answering(unknown, asked) as url:
        rig = rig_factory(url, contract="openai", model="m-1")
        assert_fell_back(await rig.ask())
    assert len(asked) == 2  # neither retried
    assert len(rig.breaker_failures) == 1
    assert failure_attributes(rig)["ers.failure.kind"] == "bad_response"
    assert str(rig.guard.breaker.snapshot()["lastError"]).endswith(
        "answered HTTP 200 with an error object (invalid_request_error) instead of a "
        "completion: its server, or a proxy in front of it, failed the request"
    )


@pytest.mark.parametrize(
    ("error", "kind", "breaker_failures", "outcome"),
    [
        # LiteLLM's proxy passing on its upstream's 429: retried as a 429 without
        # Retry-After is, no breaker failure and no cooldown.
        (
            {"message": "slow down", "type": "throttling_error", "code": "429"},
            "rate_limit",
            0,
            "refused",
        ),
        # Anthropic's overload through a proxy: retried as a 5xx is, each a breaker failure.
        ({"type": "overloaded_error", "message": "Overloaded"}, "server_error", 3, "failure"),
    ],
)
async def test_an_error_object_naming_a_rate_limit_or_a_server_error_is_retried_as_its_status(
    rig_factory: Any, error: dict[str, Any], kind: str, breaker_failures: int, outcome: str
) -> None:
    """It was a bad_response: not retried, and a breaker failure even for a rate limit."""
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    instruments = AgentInstruments.create(meter, CollectorRegistry())
    asked: list[bytes] = []
    async with answering({"error": error}, asked) as url:
        rig = rig_factory(url, contract="openai", model="m-1", instruments=instruments)
        reply = await rig.ask()

    assert_fell_back(reply)
    assert len(asked) == 3  # retried
    assert len(rig.breaker_failures) == breaker_failures
    assert rig.guard.cooldown_remaining() == 0
    attributes = failure_attributes(rig)
    assert attributes["ers.failure.kind"] == kind
    assert attributes["http.response.status_code"] == 200
    assert counted_calls(reader) == {outcome: 1}
    assert "slow down" not in str(rig.guard.breaker.snapshot()["lastError"])


async def test_a_closed_agent_sends_nothing() -> None:
    """Its transport, closed, opened a connection of its own for a later call (one still
    running as the service stopped), which nothing closed."""
    asked: list[bytes] = []
    async with answering({"response": "hi"}, asked) as url:
        agent = RemoteAgent("remote", HttpAgentSpec(kind="http", url=url), default_timeout_s=5)
        await agent.aclose()
        with pytest.raises(RuntimeError, match="agent 'remote' is closed"):
            await agent.handle(AgentRequest("plan my week", "ana"))
    assert asked == []


async def test_a_model_the_server_does_not_serve_names_the_model_setting(
    rig_factory: Any, tmp_path: Path
) -> None:
    # vLLM's answer to a model it does not serve: no error code ERS knows, only a 404.
    not_served = {
        "object": "error",
        "message": "The model `m-2` does not exist.",
        "type": "NotFoundError",
        "code": 404,
    }
    async with answering(not_served, [], status=404) as url:
        _, (incident,), _ = await fallbacks_and_incidents(
            rig_factory, tmp_path, 1, url, contract="openai", model="m-2"
        )

    assert incident.rule == "remote-client-error"
    assert "check its url, contract and model settings" in incident.message


async def test_a_streamed_reply_says_it_is_a_stream(rig_factory: Any) -> None:
    """A server or proxy that streams although ERS asks for no stream: the reply was only
    'not JSON', which sent the operator looking at the wrong thing."""
    chunk = json.dumps({"choices": [{"index": 0, "delta": {"content": "Squats."}}]})
    events = f": OPENROUTER PROCESSING\n\ndata: {chunk}\n\ndata: [DONE]\n\n".encode()
    async with answering(events, []) as url:
        rig = rig_factory(url, contract="openai", model="m-1")
        reply = await rig.ask()

    assert_fell_back(reply)
    assert failure_attributes(rig)["ers.failure.kind"] == "bad_response"
    assert "a stream of server-sent events" in str(rig.guard.breaker.snapshot()["lastError"])
