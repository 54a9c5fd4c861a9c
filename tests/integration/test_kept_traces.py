"""An incident from another service's spans (OTLP intake) links a trace that answers, and
keeps answering after the process stops (SIGTERM) or is killed (SIGKILL) and starts again."""

from __future__ import annotations

import json
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import Status, StatusCode

from tests.conftest import ErsProcess, start_ers


def span(trace_id: str, span_id: str, name: str, parent: str | None, error: str | None) -> dict:
    now = time.time_ns()
    body: dict[str, Any] = {
        "traceId": trace_id,
        "spanId": span_id,
        "name": name,
        "startTimeUnixNano": str(now - 9_000_000),
        "endTimeUnixNano": str(now),
        "status": {"code": 2, "message": error} if error else {"code": 1},
    }
    if parent:
        body["parentSpanId"] = parent
    return body


def export(service: str, spans: list[dict]) -> dict[str, Any]:
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]}
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": spans}]}]}


def incident_of(ers: ErsProcess, component: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        found = httpx.get(
            f"{ers.url}/api/emergency/incidents", params={"component": component}, timeout=5
        ).json()["incidents"]
        if found:
            return dict(found[0])
        assert time.monotonic() < deadline, f"no incident of {component}"
        time.sleep(0.1)


def get(ers: ErsProcess, path: str) -> httpx.Response:
    return httpx.get(f"{ers.url}{path}", timeout=10)


def test_an_intake_incidents_trace_link_answers_before_and_after_restarts(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "ers"
    trace_id, root, child = secrets.token_hex(16), secrets.token_hex(8), secrets.token_hex(8)
    spans = [
        span(trace_id, root, "POST /pay", None, None),
        span(trace_id, child, "charge card", root, "connection refused by the card gateway"),
    ]
    ers = start_ers(workdir)
    try:
        sent = httpx.post(f"{ers.url}/v1/traces", json=export("payments", spans), timeout=10)
        assert sent.status_code == 200, sent.text
        incident = incident_of(ers, "payments")
        (link,) = incident["traces"]
        assert link["traceId"] == trace_id
        first = get(ers, link["api"])
        assert first.status_code == 200, first.text
        assert first.json()["spanCount"] == 2 and first.json()["errorSpans"] == 1
        assert "connection refused by the card gateway" in json.dumps(first.json()["spans"])

        # The responder's actions on agents do not apply to another service: skipped, why.
        detail = get(ers, f"/api/emergency/incidents/{incident['id']}").json()
        skipped = [e["message"] for e in detail["timeline"] if e["kind"] == "action_skipped"]
        assert any("isolate" in m and "service payments's, from /v1/traces" in m for m in skipped)
        counted = [
            line
            for line in get(ers, "/metrics").text.splitlines()
            if line.startswith("ers_protocol_actions_total{")
            and 'action="serve_cached"' in line
            and 'result="skipped"' in line
        ]
        assert counted and counted[0].endswith(" 1.0"), counted

        # A degraded chat reply's own trace.
        fault = {"component": "budget", "errorType": "database"}
        assert httpx.post(f"{ers.url}/api/emergency/simulate-error", json=fault).is_success
        chat = httpx.post(
            f"{ers.url}/chat", json={"message": "budget report", "userId": "u1"}, timeout=10
        ).json()
        assert chat["emergency"] is True
        assert get(ers, f"/api/emergency/traces/{chat['traceId']}").status_code == 200

        assert ers.stop(signal.SIGTERM) == 0
        ers = start_ers(workdir)
        again = get(ers, link["api"])
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
        assert get(ers, f"/api/emergency/traces/{chat['traceId']}").status_code == 200
        assert get(ers, f"/api/emergency/incidents/{incident['id']}").json()["status"] in (
            "open",
            "acknowledged",
        )

        ers.stop(signal.SIGKILL)
        ers = start_ers(workdir)
        after_kill = get(ers, link["api"])
        assert after_kill.status_code == 200, after_kill.text
        assert after_kill.json()["spanCount"] == 2
        assert get(ers, f"/api/emergency/traces/{'0' * 32}").status_code == 404
    finally:
        ers.stop()
    assert "Traceback" not in ers.log(), ers.log()[-3000:]


def on_disk(workdir: Path, trace_id: str) -> bool:
    import sqlite3

    db = sqlite3.connect(workdir / "data" / "kept-traces.sqlite3", timeout=5)
    try:
        return db.execute("SELECT 1 FROM traces WHERE trace_id = ?", (trace_id,)).fetchone()
    finally:
        db.close()


def test_a_failing_chats_incident_names_traces_that_outlive_a_kill(tmp_path: Path) -> None:
    """The traces a failing agent's incident names are written while the service runs (a
    clean stop writes every kept trace, the test above), so they answer after a kill -9."""
    workdir = tmp_path / "ers"
    ers = start_ers(workdir, {"ERS_AUTO_RESPONSE_ENABLED": "false"})
    try:
        fault = {"component": "budget", "errorType": "database"}
        assert httpx.post(f"{ers.url}/api/emergency/simulate-error", json=fault).is_success
        replies = [
            httpx.post(
                f"{ers.url}/chat", json={"message": "budget report", "userId": f"u{n}"}, timeout=10
            ).json()
            for n in range(3)
        ]
        assert all(reply["emergency"] for reply in replies)
        incident = incident_of(ers, "budget")
        deadline = time.monotonic() + 10
        while not all(on_disk(workdir, link["traceId"]) for link in incident["traces"]):
            assert time.monotonic() < deadline, "the incident's traces were never written"
            time.sleep(0.1)
            incident = incident_of(ers, "budget")
        named = {link["traceId"] for link in incident["traces"]}
        assert named <= {reply["traceId"] for reply in replies}

        ers.stop(signal.SIGKILL)
        ers = start_ers(workdir)
        for link in incident["traces"]:
            kept = get(ers, link["api"])
            assert kept.status_code == 200, kept.text
            assert kept.json()["errorSpans"] >= 1
    finally:
        ers.stop()


def test_spans_sent_after_their_traces_error_join_the_kept_trace(tmp_path: Path) -> None:
    ers = start_ers(tmp_path)
    trace_id, root, child = secrets.token_hex(16), secrets.token_hex(8), secrets.token_hex(8)
    try:
        with httpx.Client(base_url=ers.url, timeout=10) as http:
            failed = export("late-svc", [span(trace_id, root, "GET /cart", None, "cart down")])
            assert http.post("/v1/traces", json=failed).status_code == 200
            ok = export("late-svc", [span(trace_id, child, "SELECT cart", root, None)])
            assert http.post("/v1/traces", json=ok).status_code == 200  # no error of its own
            tree = http.get(f"/api/emergency/traces/{trace_id}").json()
            # Before: a request without an error span never reached the kept traces.
            assert tree["spanCount"] == 2
            assert tree["spans"][0]["children"][0]["name"] == "SELECT cart"
    finally:
        ers.stop()


def test_one_trace_flooded_through_the_intake_stays_within_its_bound(tmp_path: Path) -> None:
    """A sender holding the intake token repeats one failing trace's id with span after span
    (the official OTLP exporter, ~12 MB in all): the lone kept trace stops at its bound
    (8 MiB), keeping the failure, instead of growing the process without end."""
    token = "intake-flood-7c1e"
    ers = start_ers(tmp_path, env={"ERS_INTAKE_TOKEN": token})
    exporter = OTLPSpanExporter(
        endpoint=f"{ers.url}/v1/traces", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    tracer = TracerProvider(resource=Resource.create({"service.name": "poller"})).get_tracer("t")
    try:
        failing = tracer.start_span("charge card")
        failing.set_status(Status(StatusCode.ERROR, "card processor unreachable"))
        failing.end()
        assert exporter.export([failing]) is SpanExportResult.SUCCESS
        under_it = trace.set_span_in_context(failing)
        sent = 1
        padded = {"payload": "x" * 1500}
        for _ in range(14):  # each request under the body limit
            batch = [tracer.start_span("poll", under_it, attributes=padded) for _ in range(500)]
            for span in batch:
                span.end()
            assert exporter.export(batch) is SpanExportResult.SUCCESS
            sent += len(batch)
        trace_id = format(failing.get_span_context().trace_id, "032x")
        kept = get(ers, f"/api/emergency/traces/{trace_id}").json()
        # Before: all 7,001 spans, the trace as large as what was sent.
        assert 0 < kept["spanCount"] < sent and kept["errorSpans"] == 1
        assert kept["spans"][0]["name"] == "charge card"
    finally:
        exporter.shutdown()
        assert ers.stop() == 0
