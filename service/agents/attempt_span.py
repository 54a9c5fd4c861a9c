"""Each attempt of a remote agent's call as a CLIENT span, and the W3C trace context it
carries to the agent.

What the OpenTelemetry httpx instrumentation would record for the call, in the stable HTTP
semantic conventions the service pins: ``http.request.method``, ``url.full`` (credentials
and query values redacted), ``server.address``/``server.port``, the peer's,
``http.response.status_code``, ``network.protocol.version``, ``error.type``, an ERROR status
for a 4xx/5xx answer or an exception (recorded as an event), and the request and response
headers named by ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST`` /
``..._RESPONSE`` (values matching ``..._SANITIZE_FIELDS``, and those of credential headers
such as ``Set-Cookie``, redacted; a URL header's, ``Location``, with its query values
redacted as ``url.full``'s). The instrumentation
works out most of that per request, wrapping the transport; one agent always POSTs to one
URL, so here it is worked out once, and an attempt costs a span and a ``traceparent``.

The trace context is written by the global propagator (W3C ``traceparent`` and baggage unless
``OTEL_PROPAGATORS`` says otherwise), as the instrumentation does. Request headers are read
before the request leaves: the auth header is added by the transport below, so it is never
in what is captured.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import httpx
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD,
    HTTP_RESPONSE_STATUS_CODE,
)
from opentelemetry.semconv.attributes.network_attributes import (
    NETWORK_PEER_ADDRESS,
    NETWORK_PEER_PORT,
    NETWORK_PROTOCOL_VERSION,
)
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.url_attributes import URL_FULL
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.util.http import (
    SanitizeValue,
    get_custom_headers,
    normalise_request_header_name,
    normalise_response_header_name,
)
from opentelemetry.util.types import AttributeValue

from telemetry.classifier import NOT_AN_INCIDENT
from telemetry.exception_events import described, record_exception
from telemetry.redaction import is_secret_header, is_url_header, redacted_url, without

CAPTURE_REQUEST_HEADERS = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST"
CAPTURE_RESPONSE_HEADERS = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE"
SANITIZE_HEADERS = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS"
# Headers whose values are credentials (``is_secret_header``: Set-Cookie, an API key, any
# name with "token", "session", "signature"...) are redacted whatever the setting above
# names: a capture of every header (".*") would otherwise keep them in the kept traces and
# incidents operators read. The instrumentation's own mark.
REDACTED_VALUE = "[REDACTED]"


class AttemptSpans:
    """Starts and finishes the client span of each ``method`` request to ``url``."""

    def __init__(self, method: str, url: str, tracer_provider: TracerProvider | None) -> None:
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        self._name = method
        parsed = httpx.URL(url)
        attributes: dict[str, AttributeValue] = {
            HTTP_REQUEST_METHOD: method,
            URL_FULL: redacted_url(str(parsed)),
            SERVER_ADDRESS: parsed.host,
            NETWORK_PEER_ADDRESS: parsed.host,
        }
        if parsed.port:  # None when it is the scheme's default
            attributes[SERVER_PORT] = attributes[NETWORK_PEER_PORT] = parsed.port
        # The guard's agent.<name> span is the incident for a failed call, not this one.
        attributes[NOT_AN_INCIDENT] = "reported by the agent span"
        self._attributes = attributes
        # Read once, as the instrumentation reads them when it instruments a client.
        self._request_headers = get_custom_headers(CAPTURE_REQUEST_HEADERS)
        self._response_headers = get_custom_headers(CAPTURE_RESPONSE_HEADERS)
        self._sanitize = SanitizeValue(get_custom_headers(SANITIZE_HEADERS))

    def start(self, request: httpx.Request) -> trace.Span:
        """The attempt's span, a child of the current one, and its context in
        ``request``'s headers. Call it before the request is sent."""
        attributes = self._attributes
        if self._request_headers:
            attributes = {
                **attributes,
                **self._captured(request.headers, self._request_headers, request_side=True),
            }
        span = self._tracer.start_span(
            self._name,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        inject(request.headers, context=trace.set_span_in_context(span))
        return span

    def answered(
        self,
        span: trace.Span,
        response: httpx.Response,
        secrets: Callable[[], Sequence[str]] = tuple,
    ) -> None:
        """The response's status (an error from 400 on) and protocol on the span. A captured
        response header has what ``secrets`` gives (the credentials the request carried)
        redacted wherever it holds them: an agent or gateway that turns a key down may echo
        it under any header (``WWW-Authenticate: Bearer error="invalid_token" sk-...``)."""
        status = response.status_code
        attributes: dict[str, AttributeValue] = {
            HTTP_RESPONSE_STATUS_CODE: status,
            NETWORK_PROTOCOL_VERSION: response.http_version.removeprefix("HTTP/"),
        }
        if status >= 400 or status < 100:
            attributes[ERROR_TYPE] = str(status)
            span.set_status(Status(StatusCode.ERROR))
        if self._response_headers:
            captured = self._captured(response.headers, self._response_headers, request_side=False)
            sent = secrets()
            for name, values in captured.items():
                attributes[name] = [without(value, sent) for value in values]
        span.set_attributes(attributes)

    @staticmethod
    def failed(span: trace.Span, exc: BaseException) -> None:
        """The exception that ended the attempt (a refused connection, a timeout, the
        cancellation by the guard's deadline), recorded as the guard records its own: an
        agent that is down fails every attempt."""
        record_exception(span, exc, {})
        span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
        span.set_status(Status(StatusCode.ERROR, described(exc)))

    def _captured(
        self, headers: httpx.Headers, wanted: list[str], *, request_side: bool
    ) -> Mapping[str, list[str]]:
        values = {key: headers.get_list(key, split_commas=True) for key in headers}
        normalise = (
            normalise_request_header_name if request_side else normalise_response_header_name
        )
        captured = self._sanitize.sanitize_header_values(values, wanted, normalise)
        return {name: _shown(name, found) for name, found in captured.items()}


def _shown(name: str, values: list[str]) -> list[str]:
    """A captured header's values as the span keeps them: a credential's redacted, a URL's
    (a redirect's ``Location`` keeps the query it was asked with, an API key in it) with
    its query values redacted."""
    if is_secret_header(name):
        return [REDACTED_VALUE] * len(values)
    if is_url_header(name):
        return [redacted_url(value) for value in values]
    return values
