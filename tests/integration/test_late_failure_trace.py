"""A failure that ended before its incident was resolved, arriving after the resolution (a
collector's backlog), is counted on the incident without reopening it, and its trace is one
of the incident's traces: the note that counts it leads to what it counted."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from tests.conftest import start_ers

TOKEN = "intake-late-5b2d"


def send_failure(url: str, *, ended_ns: int | None = None) -> str:
    """One error span of ``payments``, sent by the official OTLP exporter (its export returns
    once ERS answered: a 200 means the span is in the incident store); its trace id."""
    exporter = OTLPSpanExporter(
        endpoint=f"{url}/v1/traces", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "payments"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    started = ended_ns - 5_000_000 if ended_ns is not None else None
    span = provider.get_tracer("payments").start_span("charge card", start_time=started)
    span.record_exception(ConnectionError("connection refused by the card processor"))
    span.set_status(Status(StatusCode.ERROR, "card processor unreachable"))
    span.end(end_time=ended_ns)
    provider.shutdown()
    return format(span.get_span_context().trace_id, "032x")


def test_a_late_failure_is_counted_and_its_trace_is_named_by_the_incident(
    tmp_path: Path,
) -> None:
    ers = start_ers(tmp_path, env={"ERS_INTAKE_TOKEN": TOKEN})
    try:
        with httpx.Client(base_url=ers.url, timeout=10) as http:
            first = send_failure(ers.url)
            (incident,) = http.get("/api/emergency/incidents?component=payments").json()[
                "incidents"
            ]
            path = f"/api/emergency/incidents/{incident['id']}"
            ended_before = time.time_ns() - 1_000_000_000  # a second before the resolution
            resolved = http.post(f"{path}/resolve", json={"resolution": "processor is back"})
            assert resolved.status_code == 200, resolved.text

            late = send_failure(ers.url, ended_ns=ended_before)
            after = http.get(path).json()
            assert (after["status"], after["reopenCount"], after["count"]) == ("resolved", 0, 2)
            assert "arrived late" in after["timeline"][-1]["message"]
            # Before: counted, but its trace named nowhere (and so not archived: lost at
            # the next kill), the note pointing at a failure nobody could look at.
            assert after["traceIds"] == [first, late]
            api = next(t["api"] for t in after["traces"] if t["traceId"] == late)
            kept = http.get(api)
            assert kept.status_code == 200 and kept.json()["errorSpans"] == 1
    finally:
        assert ers.stop() == 0
