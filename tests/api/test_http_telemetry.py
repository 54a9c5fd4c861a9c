"""ERS's HTTP server telemetry against the OpenTelemetry FastAPI instrumentation it stands in
for: the same requests through both make the same spans and the same duration series."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from opentelemetry import baggage
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.propagate import get_global_textmap, set_global_textmap
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

import service.web.app  # noqa: F401  (pins the HTTP semantic conventions, as ERS runs)
from bench.skipping_meter import UNUSED_HTTP_METRICS, SkippingMeterProvider
from service.web.body_limit import BodySizeLimit
from service.web.http_telemetry import HttpTelemetry, request_durations
from tests.processes import free_port

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


class Item(BaseModel):
    name: str


def minimal_app() -> FastAPI:
    app = FastAPI()

    # Included as ERS includes its routes: a router of its own.
    items = APIRouter(prefix="/items")

    @items.post("/{item_id}")
    async def put_item(item_id: int, item: Item) -> dict[str, Any]:
        return {"id": item_id, "name": item.name}

    app.include_router(items)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("the handler broke")

    @app.get("/unavailable")
    async def unavailable() -> JSONResponse:
        return JSONResponse({"error": "try later"}, status_code=503)

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/baggage")
    async def caller_baggage() -> dict[str, object]:
        return dict(baggage.get_all())

    app.add_middleware(BodySizeLimit, max_bytes=64)
    return app


class Traced:
    def __init__(self, ours: bool) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.registry = CollectorRegistry(auto_describe=True)
        reader = PrometheusMetricReader(scope_info_enabled=False, registry=self.registry)
        meters = MeterProvider(metric_readers=[reader])
        self.app = minimal_app()
        if ours:
            self.app.add_middleware(
                HttpTelemetry,
                tracer=provider.get_tracer("ers"),
                durations=request_durations(self.registry),
                untraced=frozenset({"/livez"}),
                routes=self.app.routes,
            )
        else:
            FastAPIInstrumentor.instrument_app(
                self.app,
                tracer_provider=provider,
                meter_provider=SkippingMeterProvider(meters, UNUSED_HTTP_METRICS),
                excluded_urls="/livez",
                exclude_spans=["receive", "send"],
            )

    async def send_requests(self) -> None:
        transport = httpx.ASGITransport(
            app=self.app, raise_app_exceptions=False, client=("127.0.0.1", 40123)
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://ers.test:8080") as c:
            headers = {"traceparent": TRACEPARENT, "user-agent": "probe/1.0"}
            first = await c.post("/items/7", json={"name": "a"}, headers=headers)
            assert first.status_code == 200
            assert (await c.post("/items/x", json={})).status_code == 422
            assert (await c.get("/no/such/path")).status_code == 404
            assert (await c.get("/boom")).status_code == 500
            assert (await c.get("/unavailable?token=s3cret")).status_code == 503
            assert (await c.get("/livez")).status_code == 200
            # Answered before the router sees it: the span still names the route.
            big = await c.post("/items/8", content=b'{"name": "' + b"x" * 100 + b'"}')
            assert big.status_code == 413

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def series(self) -> dict[frozenset[tuple[str, str]], float]:
        text = generate_latest(self.registry).decode()
        return {  # an empty label is no label, to Prometheus
            frozenset((k, v) for k, v in sample.labels.items() if v): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "http_server_request_duration_seconds_count"
        }


@pytest.fixture
async def both() -> tuple[Traced, Traced]:
    ours, library = Traced(ours=True), Traced(ours=False)
    await ours.send_requests()
    await library.send_requests()
    return ours, library


# The library leaves the query in the span (a query can carry a credential), and writes the
# Host header's "host:port" as server.address where the conventions split it in two.
DIFFERENT = {"url.query", "server.address", "server.port"}


def _attributes(span: ReadableSpan) -> dict[str, Any]:
    return {k: v for k, v in (span.attributes or {}).items() if k not in DIFFERENT}


async def test_the_spans_are_the_libraries_spans(both: tuple[Traced, Traced]) -> None:
    ours, library = (side.spans() for side in both)
    assert (
        [s.name for s in ours]
        == [s.name for s in library]
        == [
            "POST /items/{item_id}",
            "POST /items/{item_id}",
            "GET",
            "GET /boom",
            "GET /unavailable",
            "POST /items/{item_id}",
        ]
    )
    for mine, theirs in zip(ours, library, strict=True):
        assert mine.kind == theirs.kind
        assert mine.status.status_code == theirs.status.status_code, mine.name
        assert _attributes(mine) == _attributes(theirs), mine.name
        assert [e.name for e in mine.events] == [e.name for e in theirs.events], mine.name
    # The caller's traceparent makes the first request's span a child of the caller's.
    assert format(ours[0].context.trace_id, "032x") == TRACE_ID
    assert ours[0].parent is not None and ours[0].parent.is_remote
    assert ours[1].parent is None
    assert (ours[0].attributes or {})["server.address"] == "ers.test"
    assert (ours[0].attributes or {})["server.port"] == 8080
    boom = ours[3].events[0].attributes or {}
    assert boom["exception.type"] == "RuntimeError"
    assert boom["exception.message"] == "the handler broke"


async def test_the_query_and_its_credential_stay_out_of_the_span(
    both: tuple[Traced, Traced],
) -> None:
    ours, library = (side.spans()[-2] for side in both)
    assert (library.attributes or {}).get("url.query") == "token=s3cret"  # what it would hold
    assert "s3cret" not in repr(dict(ours.attributes or {}))
    assert (ours.attributes or {})["url.path"] == "/unavailable"


async def test_the_duration_series_are_the_libraries_series(both: tuple[Traced, Traced]) -> None:
    ours, library = (side.series() for side in both)
    assert ours == library
    assert len(ours) == 6  # one series per request above, none for the untraced /livez
    routes = {dict(labels).get("http_route") for labels in ours}
    assert routes == {"/items/{item_id}", "/boom", "/unavailable", None}


class _OtherHeader(TraceContextTextMapPropagator):
    """A propagator reading the trace context from headers of other names (as B3's are)."""

    _TRACEPARENT_HEADER_NAME = "X-Parent-Trace"
    _TRACESTATE_HEADER_NAME = "X-Parent-State"


async def test_the_configured_propagator_names_the_headers_read() -> None:
    before = get_global_textmap()
    set_global_textmap(_OtherHeader())  # as OTEL_PROPAGATORS sets it when the process starts
    try:
        traced = Traced(ours=True)
        transport = httpx.ASGITransport(app=traced.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ers.test") as client:
            parent = {"x-parent-trace": TRACEPARENT}
            await client.post("/items/1", json={"name": "a"}, headers=parent)
            await client.post("/items/2", json={"name": "b"}, headers={"traceparent": TRACEPARENT})
    finally:
        set_global_textmap(before)
    first, second = traced.spans()
    assert format(first.context.trace_id, "032x") == TRACE_ID
    assert format(second.context.trace_id, "032x") != TRACE_ID  # not what it propagates


async def test_a_host_header_with_a_port_that_is_no_port_is_answered_and_traced() -> None:
    traced = Traced(ours=True)
    transport = httpx.ASGITransport(app=traced.app, raise_app_exceptions=False)
    hosts = [
        b"ers.test:\xb2",  # a superscript two: a digit to str.isdigit, not to int()
        b"ers.test:" + b"9" * 5000,  # more digits than int() converts
        b"ers.test:99999999999999999999",  # past what OTLP carries as an integer
    ]
    async with httpx.AsyncClient(transport=transport, base_url="http://ers.test") as client:
        answers = [
            (await client.get("/unavailable", headers={"host": h})).status_code for h in hosts
        ]
    assert answers == [503, 503, 503]  # the route's own answer, each time
    spans = traced.spans()
    assert len(spans) == 3
    for span, host in zip(spans, hosts, strict=True):
        attributes = span.attributes or {}
        assert "server.port" not in attributes
        assert attributes["server.address"] == host.decode("latin-1")


async def test_pipelined_requests_on_one_connection_are_traces_of_their_own() -> None:
    # uvicorn starts the task of a request pipelined behind another from inside the one
    # before it, whose span is current there.
    traced = Traced(ours=True)
    server = uvicorn.Server(uvicorn.Config(traced.app, port=free_port(), log_level="error"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.config.port)
        writer.write(
            b"GET /unavailable HTTP/1.1\r\nHost: ers.test\r\n\r\n"
            b"GET /unavailable HTTP/1.1\r\nHost: ers.test\r\nConnection: close\r\n\r\n"
        )
        answers = await reader.read()
        writer.close()
    finally:
        server.should_exit = True
        await serving
    assert answers.count(b"HTTP/1.1 503") == 2
    first, second = traced.spans()
    assert first.parent is None and second.parent is None
    assert first.context.trace_id != second.context.trace_id


async def test_the_callers_baggage_is_current_in_the_request() -> None:
    traced = Traced(ours=True)
    transport = httpx.ASGITransport(app=traced.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ers.test") as client:
        headers = {"traceparent": TRACEPARENT, "baggage": "tenant=blue"}
        answer = await client.get("/baggage", headers=headers)
    assert answer.json() == {"tenant": "blue"}
    (span,) = traced.spans()
    assert format(span.context.trace_id, "032x") == TRACE_ID


class _Unprintable(LookupError):
    def __str__(self) -> str:
        raise RuntimeError("no text")


async def test_an_exception_whose_message_cannot_be_read_escapes_as_itself() -> None:
    traced = Traced(ours=True)

    @traced.app.get("/unprintable")
    async def unprintable() -> None:
        raise _Unprintable()

    transport = httpx.ASGITransport(app=traced.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ers.test") as client:
        with pytest.raises(_Unprintable):  # what the server logs, not the span's trouble
            await client.get("/unprintable")
    (span,) = traced.spans()
    assert [(e.attributes or {}).get("exception.message") for e in span.events] == [
        "<exception str() failed>"
    ]


async def test_every_tracestate_header_of_the_caller_is_read() -> None:
    traced = Traced(ours=True)
    transport = httpx.ASGITransport(app=traced.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ers.test") as client:
        headers = [("traceparent", TRACEPARENT), ("tracestate", "a=1"), ("tracestate", "b=2")]
        await client.get("/unavailable", headers=headers)
    (span,) = traced.spans()
    assert span.parent is not None
    assert dict(span.parent.trace_state) == {"a": "1", "b": "2"}  # W3C: one list, combined


@pytest.mark.parametrize("ours", [True, False], ids=["ers", "library"])
async def test_an_answer_cut_off_midway_is_an_error_span(ours: bool) -> None:
    """The status went out (200), then the body broke: the request failed all the same. The
    library marks the span an error; ERS left it unset, with no error.type, so neither the
    trace search nor the failing-requests series showed the cut-off answer."""
    traced = Traced(ours=ours)

    @traced.app.get("/report")
    async def report() -> StreamingResponse:
        async def rows() -> AsyncIterator[bytes]:
            yield b"first row\n"
            raise ConnectionResetError("the report's source went away")

        return StreamingResponse(rows())

    transport = httpx.ASGITransport(app=traced.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://ers.test") as client:
        answered = await client.get("/report")
    assert answered.status_code == 200
    (span,) = traced.spans()
    assert span.status.status_code is StatusCode.ERROR
    attributes = span.attributes or {}
    assert attributes["http.response.status_code"] == 200
    assert {e.name for e in span.events} == {"exception"}  # the library records it twice
    if ours:
        assert len(span.events) == 1
        assert attributes["error.type"] == "ConnectionResetError"
        assert traced.series() == {
            frozenset(
                {
                    ("http_request_method", "GET"),
                    ("http_route", "/report"),
                    ("http_response_status_code", "200"),
                    ("error_type", "ConnectionResetError"),
                    ("network_protocol_version", "1.1"),
                    ("url_scheme", "http"),
                }
            ): 1.0
        }
