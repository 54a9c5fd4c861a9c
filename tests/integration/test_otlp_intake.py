"""The official OTLP/HTTP exporter of another service sends error spans to a real ERS; they
become incidents of that service. Malformed bodies get 400, a missing token 401."""

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

TOKEN = "intake-test-7c1e"


def test_error_spans_from_another_service_become_its_incidents(tmp_path: Path) -> None:
    ers = start_ers(tmp_path, env={"ERS_INTAKE_TOKEN": TOKEN})
    try:
        exporter = OTLPSpanExporter(
            endpoint=f"{ers.url}/v1/traces", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        provider = TracerProvider(resource=Resource.create({"service.name": "other-svc"}))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("other")
        for _ in range(3):
            with tracer.start_as_current_span("checkout") as span:
                span.record_exception(ConnectionError("Database connection timeout"))
                span.set_status(Status(StatusCode.ERROR, "db timeout"))
        with tracer.start_as_current_span("healthy-call"):
            pass
        provider.shutdown()

        with httpx.Client(base_url=ers.url, timeout=10) as http:
            deadline = time.monotonic() + 10
            while True:
                body = http.get("/api/emergency/incidents?component=other-svc").json()
                if body["total"] or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert body["total"] == 1
            incident = body["incidents"][0]
            assert incident["sourceService"] == "other-svc"
            assert incident["count"] == 3
            assert incident["classification"]["type"] == "database"

            url = "/v1/traces"
            auth = {"Authorization": f"Bearer {TOKEN}"}
            garbage = http.post(
                url,
                content=b"\x00\xffnot protobuf",
                headers={**auth, "content-type": "application/x-protobuf"},
            )
            assert garbage.status_code == 400 and garbage.json()["detail"]
            bad_json = http.post(
                url,
                content=b'{"resourceSpans": 7}',
                headers={**auth, "content-type": "application/json"},
            )
            assert bad_json.status_code == 400
            text = http.post(url, content=b"x", headers={**auth, "content-type": "text/plain"})
            assert text.status_code == 415
            missing = http.post(
                url, content=b"", headers={"content-type": "application/x-protobuf"}
            )
            assert missing.status_code == 401
            wrong = http.post(
                url,
                content=b"",
                headers={"Authorization": "Bearer nope", "content-type": "application/json"},
            )
            assert wrong.status_code == 401
    finally:
        assert ers.stop() == 0
