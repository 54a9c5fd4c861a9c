"""The official OTLP/HTTP exporter of another service sends error spans to a real ERS; they
become incidents of that service. Malformed bodies get 400, a missing token 401. A 200
comes once the error spans are written (a kill right after it loses none); spans the store
cannot write get a 503 and none of them is recorded, so the sender's retry counts once."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from google.rpc.status_pb2 import Status as RpcStatus
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from tests.conftest import start_ers

TOKEN = "intake-test-7c1e"
PROTOBUF = "application/x-protobuf"


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
            # An error reply to protobuf is a protobuf google.rpc.Status, as OTLP/HTTP has it
            # (before: JSON, which a collector's exporter cannot read into its log).
            assert garbage.status_code == 400
            assert garbage.headers["content-type"] == "application/x-protobuf"
            status = RpcStatus.FromString(garbage.content)
            assert status.code == 3 and "protobuf" in status.message, status
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
            status = RpcStatus.FromString(missing.content)
            assert status.code == 16 and "Authorization: Bearer" in status.message, status
            too_big = http.post(
                url, content=b"\0" * 2_000_000, headers={**auth, "content-type": PROTOBUF}
            )
            assert too_big.status_code == 413
            assert "at most" in RpcStatus.FromString(too_big.content).message
            wrong = http.post(
                url,
                content=b"",
                headers={"Authorization": "Bearer nope", "content-type": "application/json"},
            )
            assert wrong.status_code == 401 and "token" in wrong.json()["detail"]  # JSON asked
    finally:
        assert ers.stop() == 0


def error_spans_body(service: str, message: str, count: int = 1) -> bytes:
    """An OTLP protobuf body of ``count`` error spans, encoded by the official encoder."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    for _ in range(count):
        with provider.get_tracer("other").start_as_current_span("checkout") as span:
            span.set_status(Status(StatusCode.ERROR, message))
    provider.shutdown()
    return encode_spans(exporter.get_finished_spans()).SerializeToString()


def test_a_string_cut_inside_a_character_is_taken_with_a_replacement_character(
    tmp_path: Path,
) -> None:
    """The collector's truncate_all and Substring cut by byte, so a bounded message can end
    in part of a character. protobuf calls such a string invalid: the whole batch got 400,
    which the collector's exporter never sends again, and every error span in it was lost."""
    message = "Database connection timeout: délai dépassé"
    whole = error_spans_body("cut-svc", message)
    # "é" is two bytes: its first one alone, then a space, keeps every length as it was.
    body = whole.replace("dépassé".encode(), "dépass".encode() + b"\xc3 ")
    assert body != whole
    ers = start_ers(tmp_path, env={"ERS_INTAKE_TOKEN": TOKEN})
    try:
        with httpx.Client(base_url=ers.url, timeout=10) as http:
            headers = {"Authorization": f"Bearer {TOKEN}", "content-type": PROTOBUF}
            reply = http.post("/v1/traces", content=body, headers=headers)
            assert reply.status_code == 200, reply.content
            incidents = http.get("/api/emergency/incidents?component=cut-svc").json()
            assert incidents["total"] == 1
            (incident,) = incidents["incidents"]
            detail = http.get(f"/api/emergency/incidents/{incident['id']}").text
            assert "délai dépass\ufffd " in detail, detail
    finally:
        assert ers.stop() == 0


def incident_count(http: httpx.Client, component: str) -> int:
    body = http.get("/api/emergency/incidents", params={"component": component}).json()
    return sum(incident["count"] for incident in body["incidents"])


def test_a_200_means_the_error_spans_are_written_even_across_a_kill(tmp_path: Path) -> None:
    ers = start_ers(tmp_path)
    try:
        with httpx.Client(base_url=ers.url, timeout=10) as http:
            for n in range(3):
                sent = http.post(
                    "/v1/traces",
                    content=error_spans_body("acked-svc", "payment declined", count=2),
                    headers={"content-type": "application/x-protobuf"},
                )
                assert sent.status_code == 200, sent.text
                # Read back at once, no waiting: the 200 came after the write.
                assert incident_count(http, "acked-svc") == 2 * (n + 1)
            sent = http.post(
                "/v1/traces",
                content=error_spans_body("killed-svc", "payment declined"),
                headers={"content-type": "application/x-protobuf"},
            )
            assert sent.status_code == 200, sent.text
        ers.stop(signal.SIGKILL)  # at once: the acknowledged span must be on disk already
        ers = start_ers(tmp_path)
        with httpx.Client(base_url=ers.url, timeout=10) as http:
            assert incident_count(http, "killed-svc") == 1
    finally:
        ers.stop()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_spans_sent_again_after_a_kill_or_to_another_replica_count_once(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    """A sender whose answer was lost (the process killed after the write, a timeout)
    sends the same request again, to the restarted process or, behind a balancer, to
    another replica: its spans were counted the first time and are not counted again."""
    env = {} if database == "sqlite" else {"ERS_DATABASE_URL": request.getfixturevalue("pg_url")}
    body = error_spans_body("resent-svc", "payment declined", count=3)
    headers = {"content-type": PROTOBUF}
    ers = start_ers(tmp_path / "a", env)
    try:
        sent = httpx.post(f"{ers.url}/v1/traces", content=body, headers=headers, timeout=10)
        assert sent.status_code == 200, sent.text
        ers.stop(signal.SIGKILL)
        ers = start_ers(tmp_path / "a", env)
        with httpx.Client(base_url=ers.url, timeout=10) as http:
            again = http.post("/v1/traces", content=body, headers=headers)
            assert again.status_code == 200, again.text
            assert incident_count(http, "resent-svc") == 3  # 6 before
            # New spans of the same failure still count.
            fresh = error_spans_body("resent-svc", "payment declined", count=2)
            sent = http.post("/v1/traces", content=fresh, headers=headers)
            assert sent.status_code == 200, sent.text
            assert incident_count(http, "resent-svc") == 5
        if database == "postgresql":
            other = start_ers(tmp_path / "b", env)
            try:
                with httpx.Client(base_url=other.url, timeout=10) as http:
                    again = http.post("/v1/traces", content=fresh, headers=headers)
                    assert again.status_code == 200, again.text
                    assert incident_count(http, "resent-svc") == 5
            finally:
                assert other.stop() == 0
    finally:
        ers.stop()


def test_error_spans_the_store_cannot_write_get_a_503_and_none_is_recorded(
    tmp_path: Path,
) -> None:
    ers = start_ers(tmp_path)
    body = error_spans_body("refused-svc", "card expired", count=5)
    headers = {"content-type": "application/x-protobuf"}
    try:
        with httpx.Client(base_url=ers.url, timeout=20) as http:
            database = sqlite3.connect(tmp_path / "data" / "incidents.sqlite3", timeout=10)
            database.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON incidents "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
            database.commit()
            refused = http.post("/v1/traces", content=body, headers=headers)
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "2"
            # The reason, as a google.rpc.Status (the request was protobuf), 14 UNAVAILABLE.
            status = RpcStatus.FromString(refused.content)
            assert status.code == 14 and "could not write the 5 error spans" in status.message
            assert incident_count(http, "refused-svc") == 0

            database.execute("DROP TRIGGER refuse")
            database.commit()
            database.close()
            again = http.post("/v1/traces", content=body, headers=headers)  # the retry
            assert again.status_code == 200, again.text
            assert incident_count(http, "refused-svc") == 5
    finally:
        ers.stop()
