"""A span with invalid ids is refused alone: the others of its request are taken, and the
reply's partial_success says how many were refused and why (OTLP's partial success). The
whole request was refused with a 400, so a collector's batch lost the error spans of every
service in it for one sender's bad span."""

from __future__ import annotations

import asyncio
import secrets
import time

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Status


def span(name: str, trace_id: str, message: str) -> dict:
    now = time.time_ns()
    return {
        "traceId": trace_id,
        "spanId": secrets.token_hex(8),
        "name": name,
        "startTimeUnixNano": str(now - 9_000_000),
        "endTimeUnixNano": str(now),
        "status": {"code": 2, "message": message},
    }


def export(service: str, *spans: dict) -> dict:
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]}
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": list(spans)}]}]}


async def incident_of(client: httpx.AsyncClient, component: str) -> list[dict]:
    for _ in range(100):
        found = (await client.get(f"/api/emergency/incidents?component={component}")).json()
        if found["incidents"]:
            return found["incidents"]
        await asyncio.sleep(0.05)
    return []


async def test_a_span_with_a_short_trace_id_is_refused_alone(client: httpx.AsyncClient) -> None:
    body = export(
        "ledger",
        span("post entry", secrets.token_hex(16), "ConnectionError: ledger db refused"),
        span("legacy call", secrets.token_hex(8), "KeyError: k"),
    )
    sent = await client.post("/v1/traces", json=body)
    assert sent.status_code == 200, sent.text
    partial = sent.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 1
    assert "'legacy call' has a trace id of 8 bytes" in partial["errorMessage"]
    (incident,) = await incident_of(client, "ledger")
    assert incident["message"] == "ledger db refused"
    # The sender drops what was refused; the refusal shows here.
    metrics = (await client.get("/metrics")).text
    assert "ers_intake_spans_rejected_total 1.0" in metrics.splitlines(), metrics[:2000]


async def test_a_protobuf_reply_counts_the_refused_spans(client: httpx.AsyncClient) -> None:
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for name, trace_id in (("a", bytes(16)), ("b", secrets.token_bytes(16))):
        added = spans.add(name=name, trace_id=trace_id, span_id=secrets.token_bytes(8))
        added.status.code = Status.STATUS_CODE_ERROR
        added.status.message = "RuntimeError: boom"
    sent = await client.post(
        "/v1/traces",
        content=request.SerializeToString(),
        headers={"content-type": "application/x-protobuf"},
    )
    assert sent.status_code == 200, sent.content
    reply = ExportTraceServiceResponse.FromString(sent.content)
    assert reply.partial_success.rejected_spans == 1
    assert "all-zero trace or span id" in reply.partial_success.error_message


async def test_a_request_of_invalid_spans_alone_is_refused(client: httpx.AsyncClient) -> None:
    body = export("ledger", span("a", "abcd", "x"), span("b", "abcd", "y"))
    sent = await client.post("/v1/traces", json=body)
    assert sent.status_code == 400, sent.text
    assert "OTLP wants 16 and 8 (and 1 more spans like it)" in sent.json()["detail"]
