"""A small remote agent to put behind ERS: it speaks both contracts ERS can call, and can be
told to fail the next N calls in a chosen way, to see what the guard does about each.

Run it:

    uvicorn examples.remote_agent.app:app --host 127.0.0.1 --port 8600

Endpoints:

- ``POST /chat``: ERS's contract, ``{"message", "userId", "intent", "traceId"}`` →
  ``{"response", "confidence"}``;
- ``POST /v1/chat/completions``: the OpenAI contract, ``{"model", "messages"}`` →
  ``{"choices": [{"message": {"role": "assistant", "content"}}]}``;
- ``POST /admin/failures`` ``{"mode", "count", "retryAfter", "delayS"}``: the next
  ``count`` calls fail as ``mode`` says: ``rate_limit`` (429 with Retry-After),
  ``server_error`` (503), ``slow`` (answers after ``delayS``), ``auth`` (401),
  ``context_length`` (400 with code context_length_exceeded), ``quota`` (429 with code
  insufficient_quota, as a provider whose billing limit is spent answers), ``malformed``
  (200 without the contract's field), ``not_json`` (200 with a body cut off mid-JSON),
  ``nested`` (200 with arrays nested 100,000 deep), ``oversized`` (a 2 MB answer),
  ``empty`` (200 with an empty answer), ``lone_surrogate`` (200 whose answer ends in half of
  a UTF-16 pair, as a model cut off in the middle of an emoji writes it); and the OpenAI
  contract's completions that hold no answer (``/chat`` answers them as usual):
  ``truncated`` (``finish_reason: length``, cut off mid-word), ``content_filter``
  (``finish_reason: content_filter``, content null), ``refusal`` (``message.refusal`` set,
  content null), ``tool_calls`` (``finish_reason: tool_calls`` with a tool call),
  ``error_object`` (200 with an ``{"error": ...}`` object, as some proxies answer);
- ``GET /admin/calls``: the calls received so far (mode served, traceparent, the body's
  traceId, whether the expected Authorization header came), ``DELETE /admin/calls`` forgets them.

With ``EXAMPLE_AGENT_TOKEN_FILE`` set, chat calls must carry ``Authorization: Bearer
<token>`` (the file's text, one trailing newline removed) and get 401 otherwise.

With ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set (e.g. ERS's ``/v1/traces``), the agent
traces its requests as the service ``example-remote-agent`` and sends the spans there over
OTLP/HTTP; the ``traceparent`` ERS sends makes them part of ERS's trace. The intake token
goes in ``OTEL_EXPORTER_OTLP_TRACES_HEADERS`` (``Authorization=Bearer%20<token>``) or, to
keep it out of the environment, in the file ``EXAMPLE_AGENT_OTLP_TOKEN_FILE`` names. Unset:
no tracing.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

Mode = Literal[
    "rate_limit",
    "server_error",
    "slow",
    "auth",
    "context_length",
    "quota",
    "malformed",
    "not_json",
    "nested",
    "oversized",
    "empty",
    "lone_surrogate",
    "truncated",
    "content_filter",
    "refusal",
    "tool_calls",
    "error_object",
]

# The OpenAI contract's 200s that hold no answer: (content, finish_reason, message fields).
COMPLETIONS: dict[str, tuple[str | None, str, dict[str, Any]]] = {
    "truncated": ("Here is your plan: squats, push-", "length", {}),
    "content_filter": (None, "content_filter", {}),
    "refusal": (None, "stop", {"refusal": "I'm sorry, I can't help with that."}),
    "tool_calls": (
        None,
        "tool_calls",
        {
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ]
        },
    ),
}


class Failures(BaseModel):
    mode: Mode
    count: int = Field(1, ge=0, le=10_000)
    retryAfter: str | None = Field(None, max_length=100)  # seconds or an HTTP date
    delayS: float = Field(2.0, ge=0, le=60)


class ErsRequest(BaseModel):
    message: str = Field(max_length=100_000)
    userId: str = Field(max_length=200)
    intent: str | None = None
    traceId: str | None = None


class Message(BaseModel):
    role: str
    content: str = Field(max_length=100_000)


class OpenAIRequest(BaseModel):
    model: str | None = None
    messages: list[Message] = Field(min_length=1, max_length=100)


SERVICE_NAME = "example-remote-agent"


def _read_token(variable: str) -> str | None:
    path = os.environ.get(variable)
    if not path:
        return None
    text = Path(path).read_text()
    return text[:-1] if text.endswith("\n") else text


def _token() -> str | None:
    return _read_token("EXAMPLE_AGENT_TOKEN_FILE")


def _tracer_provider() -> Any:
    """An SDK tracer provider exporting to ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or None
    when that is unset. The exporter reads the endpoint and ``..._HEADERS`` itself."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    otlp_token = _read_token("EXAMPLE_AGENT_OTLP_TOKEN_FILE")
    headers = None if otlp_token is None else {"Authorization": f"Bearer {otlp_token}"}
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    # A short delay: a failed call's spans reach the collector while its trace is looked at.
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(headers=headers), schedule_delay_millis=200)
    )
    return provider


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    try:
        yield
    finally:
        if app.state.tracer_provider is not None:
            app.state.tracer_provider.shutdown()  # flushes the spans still batched


app = FastAPI(title="example remote agent", lifespan=_lifespan)
app.state.tracer_provider = _tracer_provider()
if app.state.tracer_provider is not None:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, tracer_provider=app.state.tracer_provider)
app.state.failures = None
app.state.calls = []
app.state.expected_auth = None if (token := _token()) is None else f"Bearer {token}"


def _error(status: int, message: str, kind: str, code: str | None = None) -> Response:
    """An OpenAI-style error reply."""
    error = {"message": message, "type": kind, "code": code or kind}
    return JSONResponse({"error": error}, status_code=status)


def _failure_reply(contract: str, failure: Failures) -> Response | None:
    if failure.mode == "rate_limit":
        headers = {} if failure.retryAfter is None else {"Retry-After": failure.retryAfter}
        body = {"error": {"message": "too many requests", "code": "rate_limit_exceeded"}}
        return JSONResponse(body, status_code=429, headers=headers)
    if failure.mode == "server_error":
        return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
    if failure.mode == "auth":
        return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
    if failure.mode == "context_length":
        said = "This model's maximum context length is 8192 tokens."
        return _error(400, said, "invalid_request_error", "context_length_exceeded")
    if failure.mode == "quota":
        return _error(429, "You exceeded your current quota.", "insufficient_quota")
    if failure.mode in COMPLETIONS or failure.mode == "error_object":
        if contract != "openai":
            return None
        if failure.mode == "error_object":
            error = {"message": "No models available", "type": "invalid_request_error"}
            return JSONResponse({"error": error})
        content, finish_reason, fields = COMPLETIONS[failure.mode]
        return JSONResponse(_completion(content, finish_reason, fields))
    if failure.mode == "malformed":
        return JSONResponse({"answer": "a field no contract has"})
    if failure.mode == "not_json":
        return Response('{"response": "cut off', media_type="application/json")
    if failure.mode == "nested":
        return Response("[" * 100_000 + "]" * 100_000, media_type="application/json")
    if failure.mode == "oversized":
        return JSONResponse({"response": "x" * 2_000_000, "confidence": 0.9})
    if failure.mode == "empty":
        return JSONResponse(_answer(contract, ""))
    if failure.mode == "lone_surrogate":
        # Valid JSON (json.dumps escapes it as \ud83d), but not text: it cannot be encoded.
        text = json.dumps(_answer(contract, "Here is your plan \ud83d"))
        return Response(text, media_type="application/json")
    return None


def _answer(contract: str, text: str) -> dict[str, Any]:
    if contract == "openai":
        return _completion(text, "stop", {})
    return {"response": text, "confidence": 0.9}


def _completion(content: str | None, finish_reason: str, fields: dict[str, Any]) -> dict[str, Any]:
    message = {"role": "assistant", "content": content, **fields}
    return {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    }


async def _serve(
    request: Request, contract: str, text: str, trace_id: str | None = None
) -> Response | dict[str, Any]:
    failures: Failures | None = app.state.failures
    mode = None
    if failures is not None and failures.count > 0:
        failures.count -= 1
        mode = failures.mode
    authorization = request.headers.get("authorization")
    expected = app.state.expected_auth
    app.state.calls.append(
        {
            "contract": contract,
            "mode": mode,
            "traceparent": request.headers.get("traceparent"),
            "traceId": trace_id,
            "authorized": expected is None or authorization == expected,
        }
    )
    if expected is not None and authorization != expected:
        return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
    if mode is not None and failures is not None:
        if mode == "slow":
            await asyncio.sleep(failures.delayS)
        else:
            reply = _failure_reply(contract, failures)
            if reply is not None:
                return reply
    return _answer(contract, f"The example agent read: {text[:200]}")


@app.post("/chat")
async def chat(body: ErsRequest, request: Request) -> Any:
    return await _serve(request, "ers", body.message, body.traceId)


@app.post("/v1/chat/completions")
async def completions(body: OpenAIRequest, request: Request) -> Any:
    return await _serve(request, "openai", body.messages[-1].content)


@app.post("/admin/failures")
async def inject(failures: Failures) -> dict[str, Any]:
    app.state.failures = failures
    return failures.model_dump()


@app.get("/admin/calls")
async def calls() -> list[dict[str, Any]]:
    return app.state.calls


@app.delete("/admin/calls")
async def forget() -> dict[str, int]:
    count = len(app.state.calls)
    app.state.calls = []
    app.state.failures = None
    return {"forgotten": count}
