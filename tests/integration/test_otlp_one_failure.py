"""One failure of another service is one occurrence of one incident: the database call that
failed, the handler the exception escaped and the server span's 500 around them, sent by the
official OTLP exporter to a real ERS. Failures side by side in one request count each; the
same spans sent again after a 200 whose reply was lost count once."""

from __future__ import annotations

from pathlib import Path

import httpx
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from tests.conftest import start_ers

PROTOBUF = {"content-type": "application/x-protobuf"}


class OperationalError(Exception):
    pass


def failed_requests(service: str, requests: int, *, side_by_side: bool = False) -> bytes:
    """``requests`` failing checkouts of ``service`` as its instrumentation reports them:
    a SERVER span with the 500 (no exception of its own), the handler the database error
    escaped, and the database call (with ``side_by_side``, two calls failing one after the
    other, the second with another error)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("shop")
    for _ in range(requests):
        with tracer.start_as_current_span("POST /checkout", kind=SpanKind.SERVER) as server:
            try:
                with tracer.start_as_current_span("checkout"):  # records what escapes it
                    if side_by_side:
                        with tracer.start_as_current_span("SELECT stock") as call:
                            call.record_exception(TimeoutError("stock lookup timed out"))
                            call.set_status(Status(StatusCode.ERROR, "timed out"))
                    with tracer.start_as_current_span("INSERT orders", kind=SpanKind.CLIENT):
                        raise OperationalError("could not connect to server: orders-db")
            except OperationalError:
                server.set_attribute("http.response.status_code", 500)
                server.set_attribute("error.type", "500")
                server.set_status(Status(StatusCode.ERROR))
    provider.shutdown()
    return encode_spans(exporter.get_finished_spans()).SerializeToString()


def incidents_of(http: httpx.Client, service: str) -> dict[str, int]:
    body = http.get("/api/emergency/incidents", params={"component": service}).json()
    return {i["fingerprint"]: i["count"] for i in body["incidents"]}


def joined_total(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("ers_incident_spans_joined_total"):
            return float(line.split()[-1])
    raise AssertionError("/metrics has no ers_incident_spans_joined_total")


def test_a_failure_reported_on_three_nested_spans_is_one_occurrence(tmp_path: Path) -> None:
    ers = start_ers(tmp_path)
    try:
        with httpx.Client(base_url=ers.url, timeout=20) as http:
            body = failed_requests("shop", requests=3)
            sent = http.post("/v1/traces", content=body, headers=PROTOBUF)
            assert sent.status_code == 200, sent.text
            # Before: the database's incident counted 6 (the call and the handler it escaped
            # each) and the server's 500 was a second incident with 3.
            incidents = incidents_of(http, "shop")
            assert list(incidents.values()) == [3], incidents
            (fingerprint,) = incidents
            assert "OperationalError" in fingerprint
            assert joined_total(http) == 6  # two spans around each of the three failures

            # Every span of a failed request is still in its kept trace.
            (incident,) = http.get("/api/emergency/incidents?component=shop").json()["incidents"]
            detail = http.get(f"/api/emergency/incidents/{incident['id']}").json()
            trace_id = detail["traces"][0]["traceId"]
            kept = http.get(f"/api/emergency/traces/{trace_id}").json()
            assert (kept["spanCount"], kept["errorSpans"]) == (3, 3)

            # The sender sends the same spans again (its 200 was lost): counted once.
            again = http.post("/v1/traces", content=body, headers=PROTOBUF)
            assert again.status_code == 200, again.text
            assert incidents_of(http, "shop") == incidents

            # Two calls failing side by side in one request are two failures.
            body = failed_requests("market", requests=2, side_by_side=True)
            sent = http.post("/v1/traces", content=body, headers=PROTOBUF)
            assert sent.status_code == 200, sent.text
            incidents = incidents_of(http, "market")
            assert sorted(incidents.values()) == [2, 2], incidents
            assert {f.split(":")[1] for f in incidents} == {"timeout", "database"}
    finally:
        assert ers.stop() == 0
