"""One SERVER span and one request-duration measurement per HTTP request, under the stable
HTTP semantic conventions: what the OpenTelemetry ASGI instrumentation records, for a
fraction of its cost.

The span is named ``{method} {route}`` (``{method}`` when no route matched) and carries
``http.request.method``, ``http.route``, ``http.response.status_code``, ``url.scheme``,
``url.path``, ``network.protocol.version``, ``server.address``/``server.port``,
``client.address``/``client.port`` and ``user_agent.original``; a ``traceparent`` (and
``tracestate``) from the caller makes it a child of the caller's span, and the caller's
``baggage`` is current in the request, through the globally configured propagator. A 5xx
answer sets the span's status to ERROR and its ``error.type`` (and the measurement's) to the
status code; an exception that escapes the application is recorded on the span, and is a
500. The query string is left out of the span: a query can carry a credential.

The duration goes to ``http_server_request_duration_seconds`` (the same series, labels and
buckets as the instrumentation's histogram, read by the dashboards and the SLO rules),
kept as plain bucket counts (``BucketHistogram``). The instrumentation paid about 150 us a
request on top of a bare FastAPI app, mostly in building attribute sets, matching the route
again and passing measurements through the metrics SDK; this pays a span and a bisect.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from fastapi.routing import RouteContext, iter_route_contexts
from opentelemetry.context import Context, attach, detach
from opentelemetry.propagate import get_global_textmap
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer, set_span_in_context
from prometheus_client import CollectorRegistry
from starlette.routing import BaseRoute, Match

from service.resilience.instruments import BucketHistogram
from telemetry.exception_events import record_exception

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The semantic conventions' buckets for http.server.request.duration, in seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
DURATION_LABELS = (
    "http_request_method",
    "http_response_status_code",
    "http_route",
    "network_protocol_version",
    "url_scheme",
    "error_type",
)
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


def request_durations(registry: CollectorRegistry) -> BucketHistogram:
    return BucketHistogram(
        registry,
        "http_server_request_duration_seconds",
        "Duration of HTTP server requests.",
        DURATION_BUCKETS,
        label=DURATION_LABELS,
    )


class HttpTelemetry:
    """ASGI middleware; ``untraced`` paths (probes, the metrics scrape) get neither."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tracer: Tracer,
        durations: BucketHistogram,
        untraced: frozenset[str],
        routes: Sequence[BaseRoute] = (),
    ) -> None:
        """``routes``: the application's, to name the route of a request answered before
        the router saw it (a body over the limit)."""
        self.app = app
        self._tracer = tracer
        self._durations = durations
        self._untraced = untraced
        self._routes = routes
        self._flat_routes: list[RouteContext] | None = None
        # The configured propagator (W3C traceparent, tracestate and baggage unless
        # OTEL_PROPAGATORS says otherwise) and the headers it reads, as ASGI names them.
        self._propagator = get_global_textmap()
        self._propagated = {
            name.lower().encode("latin-1"): name for name in self._propagator.fields
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._untraced:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"]
        if method not in KNOWN_METHODS:
            method = "_OTHER"
        attributes, carrier = _request_attributes(scope, method, self._propagated)
        # The caller's context (its span, its baggage), never the current one: uvicorn starts
        # a request pipelined behind another inside the context of the one before it.
        parent = self._propagator.extract(carrier, Context()) if carrier else Context()
        span = self._tracer.start_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        token = attach(set_span_in_context(span, parent))
        status: int | None = None
        broken = ""  # the exception that cut off an answer already under way

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        except Exception as exc:
            if status is not None:  # the client got a status and then a cut-off body
                broken = type(exc).__qualname__
            status = status or 500  # what the server answers for it, unless it had answered
            record_exception(span, exc, {})
            raise
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) if route is not None else self._route_of(scope)
            if path:
                span.update_name(f"{method} {path}")
                span.set_attribute("http.route", path)
            if status is not None:  # None: the request was cancelled before an answer
                span.set_attribute("http.response.status_code", status)
            error_type = str(status) if status is not None and status >= 500 else broken
            if error_type:
                span.set_attribute("error.type", error_type)
                span.set_status(Status(StatusCode.ERROR))
            detach(token)
            span.end()
            self._durations.record(
                time.perf_counter() - started,
                method,
                str(status or ""),
                path or "",
                attributes["network.protocol.version"],
                attributes["url.scheme"],
                error_type,
            )

    def _route_of(self, scope: Scope) -> str | None:
        """The route the router would have taken (a full match, else a path that matched
        with another method), as the instrumentation names it."""
        if self._flat_routes is None:  # the routes of included routers, each with its path
            self._flat_routes = list(iter_route_contexts(self._routes))
        partial = None
        for route in self._flat_routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route.path
            if match is Match.PARTIAL and partial is None:
                partial = route.path
        return partial


def _request_attributes(
    scope: Scope, method: str, propagated: dict[bytes, str]
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.scheme": scope.get("scheme", "http"),
        "url.path": scope["path"],
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    if method == "_OTHER":
        attributes["http.request.method_original"] = scope["method"]
    client = scope.get("client")
    if client:
        attributes["client.address"] = client[0]
        attributes["client.port"] = client[1]
    # Every value of a repeated header: the propagator reads the first traceparent and
    # combines all tracestate headers, as W3C Trace Context says.
    carrier: dict[str, list[str]] = {}
    for name, value in scope["headers"]:
        if name == b"host":
            text = value.decode("latin-1")
            host, separator, port = text.rpartition(":")
            # ASCII digits only (int() refuses "²"), and a port's range (OTLP carries int64).
            if (
                separator
                and port.isascii()
                and port.isdigit()
                and len(port) <= 5
                and int(port) <= 65535
                and (":" not in host or host.endswith("]"))
            ):
                attributes["server.address"] = host
                attributes["server.port"] = int(port)
            else:
                attributes["server.address"] = text
        elif name == b"user-agent":
            attributes["user_agent.original"] = value.decode("latin-1")
        elif name in propagated:
            carrier.setdefault(propagated[name], []).append(value.decode("latin-1"))
    return attributes, carrier
