"""A remote agent's attempt span: the HTTP attributes, the trace context it sends, the
headers an operator asks to capture, and what it never records."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service.agents.attempt_span import AttemptSpans
from service.agents.base import AgentRequest
from service.agents.failure_kinds import FailureKind
from service.agents.remote import RemoteAgent
from service.agents.specs import HttpAgentSpec


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def post(url: str) -> httpx.Request:
    return httpx.Request("POST", url, json={"message": "hi"})


def test_an_answered_attempt_is_a_client_span_under_the_current_one_and_sends_its_context(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    spans = AttemptSpans("POST", "http://127.0.0.1:8600/chat", provider)
    request = post("http://127.0.0.1:8600/chat")
    with provider.get_tracer("test").start_as_current_span("agent.remote") as parent:
        span = spans.start(request)
        spans.answered(span, httpx.Response(200, request=request))
        span.end()

    (attempt,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert attempt.name == "POST"
    assert attempt.parent is not None
    assert attempt.parent.span_id == parent.get_span_context().span_id
    assert dict(attempt.attributes or {}) == {
        "http.request.method": "POST",
        "url.full": "http://127.0.0.1:8600/chat",
        "server.address": "127.0.0.1",
        "server.port": 8600,
        "network.peer.address": "127.0.0.1",
        "network.peer.port": 8600,
        "ers.not_an_incident": "reported by the agent span",
        "http.response.status_code": 200,
        "network.protocol.version": "1.1",
    }
    assert attempt.status.status_code is StatusCode.UNSET
    trace_id = format(attempt.context.trace_id, "032x")
    span_id = format(attempt.context.span_id, "016x")
    flags = format(attempt.context.trace_flags, "02x")
    assert request.headers["traceparent"] == f"00-{trace_id}-{span_id}-{flags}"


def test_an_error_status_or_an_exception_makes_the_attempt_an_error(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    spans = AttemptSpans("POST", "http://127.0.0.1:8600/chat", provider)
    answered = spans.start(post("http://127.0.0.1:8600/chat"))
    spans.answered(answered, httpx.Response(503))
    answered.end()
    refused = spans.start(post("http://127.0.0.1:8600/chat"))
    spans.failed(refused, httpx.ConnectError("All connection attempts failed"))
    refused.end()

    by_status, by_exception = exporter.get_finished_spans()
    assert by_status.status.status_code is StatusCode.ERROR
    assert by_status.attributes is not None and by_status.attributes["error.type"] == "503"
    assert by_exception.status.status_code is StatusCode.ERROR
    assert by_exception.status.description == "ConnectError: All connection attempts failed"
    assert by_exception.attributes is not None
    assert by_exception.attributes["error.type"] == "ConnectError"
    assert [e.name for e in by_exception.events] == ["exception"]


def test_credentials_and_signatures_in_the_url_are_redacted(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    url = "https://user:pw@agents.example/chat?sig=abc123&x=1"
    spans = AttemptSpans("POST", url, provider)
    spans.start(post(url)).end()

    (attempt,) = exporter.get_finished_spans()
    assert attempt.attributes is not None
    assert (
        attempt.attributes["url.full"]
        == "https://REDACTED:REDACTED@agents.example/chat?sig=REDACTED&x=REDACTED"
    )
    assert "server.port" not in attempt.attributes  # the scheme's default
    assert "abc123" not in attempt.to_json() and "pw@" not in attempt.to_json()


def test_every_query_value_is_redacted_an_api_key_too(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # Some LLM APIs take their key in the query string, under names of their own.
    url = "http://127.0.0.1:8701/v1/chat/completions?key=k-123&api-version=2024&empty="
    spans = AttemptSpans("POST", url, provider)
    spans.start(post(url)).end()

    (attempt,) = exporter.get_finished_spans()
    assert attempt.attributes is not None
    assert attempt.attributes["url.full"] == (
        "http://127.0.0.1:8701/v1/chat/completions?key=REDACTED&api-version=REDACTED&empty="
    )
    assert "k-123" not in attempt.to_json()


def test_an_azure_api_version_is_kept_and_the_key_beside_it_is_not(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Every query value was redacted, the api-version of an Azure OpenAI deployment's URL
    too: the span of a failing call no longer said which API version it was made to."""
    base = "https://res.openai.azure.com/openai/deployments/gpt-4o/chat/completions"
    url = f"{base}?api-version=2024-02-01&api-key=k-123"
    spans = AttemptSpans("POST", url, provider)
    spans.start(post(url)).end()

    (attempt,) = exporter.get_finished_spans()
    assert attempt.attributes is not None
    assert attempt.attributes["url.full"] == f"{base}?api-version=2024-02-01&api-key=REDACTED"
    assert "k-123" not in attempt.to_json()


async def test_an_error_quoting_the_api_version_keeps_it_and_the_key_beside_it_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The span's URL shows the api-version; an error quoting it was still cut to REDACTED,
    as if it were the key."""
    said = b'{"error": {"code": "retired:2024-02-01:k-live-1234"}}'

    async def answer(self: object, request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, stream=httpx.ByteStream(said), request=request)

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", answer)
    base = "https://res.openai.azure.com/openai/deployments/gpt-4o"
    spec = HttpAgentSpec(
        url=f"{base}?api-version=2024-02-01&api-key=k-live-1234", contract="openai", model="gpt-4o"
    )
    agent = RemoteAgent("azure", spec, default_timeout_s=5.0)
    try:
        with pytest.raises(FailureKind) as failed:
            await agent.handle(AgentRequest(message="hi", user_id="u1"))
    finally:
        await agent.aclose()
    assert str(failed.value) == "agent 'azure' failed: HTTP 500 (retired:2024-02-01:REDACTED)"


def test_headers_are_captured_as_configured_and_sanitized(
    provider: TracerProvider, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", "x-.*")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE", "retry-after")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "x-api-.*")
    spans = AttemptSpans("POST", "http://127.0.0.1:8600/chat", provider)
    request = httpx.Request(
        "POST",
        "http://127.0.0.1:8600/chat",
        headers={"x-team": "blue", "x-api-key": "k-123"},
        json={},
    )
    span = spans.start(request)
    spans.answered(span, httpx.Response(429, headers={"retry-after": "30", "x-other": "no"}))
    span.end()

    (attempt,) = exporter.get_finished_spans()
    attributes = dict(attempt.attributes or {})
    assert attributes["http.request.header.x_team"] == ("blue",)
    assert attributes["http.request.header.x_api_key"] == ("[REDACTED]",)
    assert attributes["http.response.header.retry_after"] == ("30",)
    assert "http.response.header.x_other" not in attributes
    assert "http.request.header.traceparent" not in attributes  # read before it is added


def test_a_captured_location_has_its_query_values_redacted(
    provider: TracerProvider, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An API that takes its key in the query redirects (http to https) with the same query.
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE", "location")
    url = "http://127.0.0.1:8701/v1/chat/completions?key=k-123"
    spans = AttemptSpans("POST", url, provider)
    span = spans.start(post(url))
    moved = "https://127.0.0.1:8701/v1/chat/completions?key=k-123"
    spans.answered(span, httpx.Response(301, headers={"location": moved}))
    span.end()

    (attempt,) = exporter.get_finished_spans()
    assert (attempt.attributes or {})["http.response.header.location"] == (
        "https://127.0.0.1:8701/v1/chat/completions?key=REDACTED",
    )
    assert "k-123" not in attempt.to_json()


def test_a_credential_a_response_header_echoes_is_redacted_whatever_the_header(
    provider: TracerProvider, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A gateway turning the key down names it in its challenge and in a debugging header.
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE", ".*")
    url = "http://127.0.0.1:8600/chat?key=q-key-5e21"
    spans = AttemptSpans("POST", url, provider)
    span = spans.start(post(url))
    echoed = {
        "www-authenticate": 'Bearer error="invalid_token", token="sk-agent-90af"',
        "x-debug-request": "/chat?key=q-key-5e21 with Bearer sk-agent-90af",
        "retry-after": "30",
    }
    spans.answered(
        span,
        httpx.Response(401, headers=echoed),
        lambda: ["Bearer sk-agent-90af", "sk-agent-90af", "q-key-5e21"],
    )
    span.end()

    (attempt,) = exporter.get_finished_spans()
    attributes = dict(attempt.attributes or {})
    assert attributes["http.response.header.www_authenticate"] == (
        'Bearer error="invalid_token"',
        'token="REDACTED"',
    )
    assert attributes["http.response.header.x_debug_request"] == (
        "/chat?key=REDACTED with REDACTED",
    )
    assert attributes["http.response.header.retry_after"] == ("30",)
    for secret in ("sk-agent-90af", "q-key-5e21"):
        assert secret not in attempt.to_json()
