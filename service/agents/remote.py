"""An agent reached over HTTP: ERS's own small JSON contract, or OpenAI chat completions.

One pooled ``httpx.AsyncHTTPTransport`` per agent, sent to without an ``httpx.AsyncClient``:
the client's layer (cookies, redirects, auth from the URL, event hooks) holds nothing an
agent call uses, and cost about as much CPU per call as the telemetry below. Without it no
cookie is kept: one transport calls for every user, so a cookie the agent set in one
chat's reply would otherwise go out with every later chat's request, whoever sent it; and
a redirect is answered as the agent's reply (a 3xx is no answer); the proxy settings of the
environment are not read (a proxy's transport would be one without the auth header).

Each attempt is a CLIENT span of its own under the guard's ``agent.<name>`` span
(``service.agents.attempt_span``: the HTTP attributes the OpenTelemetry httpx
instrumentation would set, made by the agent itself at a fraction of the instrumentation's
cost) and carries a W3C ``traceparent`` to the agent. Nothing retries below the guard (the
transport makes one try): the guard is the only retry loop, so attempts, backoff and the
time budget are counted in one place. Failures are raised as the kinds of
``service.agents.failure_kinds``, which the guard reads, and their kind is on the attempt's
span too.

The auth header's value is read from ``auth_file`` (again before each call after a 401 or
403, until one is let in) and added by the transport, after the
attempt's span has read the request: the header is never in what the span sees (so no
``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*`` setting can put it in a span), and it is in
no message, log or span of ours.

Contracts:

- ``ers``: POST ``url`` with ``{"message", "userId", "intent", "traceId"}`` (``intent`` and
  ``traceId`` may be null), answer ``{"response": str, "confidence": float in [0, 1]}``
  (``confidence`` optional);
- ``openai``: POST ``{url}/v1/chat/completions`` with ``{"model", "messages": [{"role":
  "user", "content": message}]}``, answer ``choices[0].message.content`` (read by
  ``service.agents.openai_reply``, which tells a refusal or a cut-off answer from an answer).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qsl

import httpx
from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from service.agents.attempt_span import AttemptSpans
from service.agents.auth_file import read_auth_header
from service.agents.base import AgentReply, AgentRequest
from service.agents.failure_kinds import (
    CREDENTIALS_IN_AUTH_FILE,
    CREDENTIALS_IN_URL,
    FAILURE_KIND_ATTRIBUTE,
    NO_CREDENTIALS,
    AgentUnreachable,
    BadResponse,
    CredentialsRejected,
    FailureKind,
    NextSteps,
    RemoteTimeout,
    failure_from_response,
)
from service.agents.openai_reply import completion_text
from service.agents.reply_body import read_at_most
from service.agents.specs import HttpAgentSpec
from service.settings import SettingsError
from telemetry.redaction import (
    REDACTED,
    is_public_query_value,
    is_secret_name,
    redacted_query,
    without,
)

log = logging.getLogger("ers.agents")
# A reply bigger than this is not a chat answer.
MAX_REPLY_BYTES = 1_048_576
# What httpx's client sends on every request; the two encodings are those ``read_at_most``
# inflates as it reads.
HEADERS = httpx.Headers(
    {
        "Accept": "*/*",
        "Accept-Encoding": "gzip, deflate",
        "Connection": "keep-alive",
        "User-Agent": f"python-httpx/{httpx.__version__}",
    }
)


class _AuthTransport(httpx.AsyncHTTPTransport):
    """Adds the auth header as the request leaves, after the attempt's span has read the
    request's headers."""

    def __init__(self, header: tuple[str, str] | None, **options: Any) -> None:
        super().__init__(**options)
        self.header = header

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.header is not None:
            request.headers[self.header[0]] = self.header[1]
        return await super().handle_async_request(request)


def _next_steps(spec: HttpAgentSpec, url: httpx.URL) -> NextSteps:
    """What an error reply tells the operator to check: where the agent's credentials are,
    and which settings a 404 may point at (for openai, a model the server does not serve)."""
    settings = "url, contract and model" if spec.contract == "openai" else "url and contract"
    query = parse_qsl(url.query.decode("ascii"))
    if spec.auth_file is not None:
        credentials = CREDENTIALS_IN_AUTH_FILE
    elif any(not is_public_query_value(name, value) for name, value in query):
        credentials = CREDENTIALS_IN_URL
    else:
        credentials = NO_CREDENTIALS
    return NextSteps(credentials, settings)


class RemoteAgent:
    """An ``Agent`` whose ``handle`` is one HTTP call to ``spec.url``."""

    # A call its guard's deadline cuts is this kind on the guard's span: its own timeout is
    # as long, and the guard's, armed first, ends it first.
    deadline_kind = RemoteTimeout.kind

    def __init__(
        self,
        name: str,
        spec: HttpAgentSpec,
        *,
        default_timeout_s: float,
        tracer_provider: TracerProvider | None = None,
        private_auth_file: bool = False,
    ) -> None:
        self.name = name
        self.spec = spec
        self.timeout_s = spec.timeout_s or default_timeout_s
        # Parsed once: httpx parses a URL given as text twice for every request.
        self._url = httpx.URL(str(spec.url))
        if spec.contract == "openai":  # the path goes before a query (?key=… of some APIs)
            path = self._url.path.rstrip("/") + "/v1/chat/completions"
            self._url = self._url.copy_with(path=path)
        self.url = str(self._url)
        self._next_steps = _next_steps(spec, self._url)
        self._private_auth_file = private_auth_file
        # Set by a 401 or 403: the file is read again before each call until one is let in,
        # so a key rotated in the file is used without a restart.
        self._reread_auth = False
        self._transport = _AuthTransport(
            read_auth_header(name, spec, private=private_auth_file),
            retries=0,
            limits=httpx.Limits(
                max_connections=spec.max_connections,
                max_keepalive_connections=spec.max_connections,
            ),
        )
        # Connect, write, read and wait for a pooled connection: each within the timeout.
        self._extensions = {"timeout": httpx.Timeout(self.timeout_s).as_dict()}
        self._spans = AttemptSpans("POST", self.url, tracer_provider)
        # A closed transport sends on, over a connection of its own that nothing closes.
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        await self._transport.aclose()

    async def handle(self, request: AgentRequest) -> AgentReply:
        if self._reread_auth:
            await self._reread_auth_file()
        outgoing = httpx.Request(
            "POST",
            self._url,
            headers=HEADERS,
            json=self._body(request),
            extensions=self._extensions,
        )
        span = self._spans.start(outgoing)
        try:
            status, headers, content = await self._exchange(outgoing, span)
            if status >= 300:
                failure = failure_from_response(
                    self.name, status, headers, content or b"", self._secrets(), self._next_steps
                )
                self._reread_auth = self._reread_auth or isinstance(failure, CredentialsRejected)
                span.set_attribute(FAILURE_KIND_ATTRIBUTE, failure.kind)
                raise failure
            self._reread_auth = False
            # Read while the attempt's span is open, so a reply that holds no answer is on it
            # with its kind (bad_response, refusal, ...), as every other failure of the attempt is.
            return self._answer(status, content)
        except FailureKind as exc:
            span.set_attribute(FAILURE_KIND_ATTRIBUTE, exc.kind)
            raise
        finally:
            span.end()

    def _answer(self, status: int, content: bytes | None) -> AgentReply:
        if not 200 <= status < 300:
            raise BadResponse(
                f"agent '{self.name}' answered HTTP {status}; expected 200", status=status
            )
        if content is None:
            raise self._bad(f"the reply is over {MAX_REPLY_BYTES} bytes")
        return self._reply(status, content)

    async def _reread_auth_file(self) -> None:
        if self.spec.auth_file is None:
            return
        try:
            self._transport.header = await asyncio.to_thread(
                read_auth_header, self.name, self.spec, private=self._private_auth_file
            )
        except SettingsError as exc:  # names the file, never its text
            log.warning("%s; agent '%s' keeps the header read before", exc, self.name)

    async def _exchange(
        self, outgoing: httpx.Request, span: trace.Span
    ) -> tuple[int, httpx.Headers, bytes | None]:
        """Send the request and read the reply (None past ``MAX_REPLY_BYTES``); a transport
        failure is recorded on the attempt's span and raised as its failure kind."""
        try:
            if self._closed:
                raise RuntimeError(f"agent '{self.name}' is closed: the service is stopping")
            response = await self._transport.handle_async_request(outgoing)
            response.request = outgoing
            try:
                self._spans.answered(span, response, self._secrets)
                content = await read_at_most(response, MAX_REPLY_BYTES)
            finally:
                await response.aclose()
        except asyncio.CancelledError as exc:  # the guard's deadline, or a shutdown
            self._spans.failed(span, exc)
            raise
        except Exception as raised:
            exc = self._without_secrets(raised)
            self._spans.failed(span, exc)
            failure = self._transport_failure(exc)
            if failure is None:
                if exc is raised:
                    raise
                raise exc from None  # the scrubbed copy: the original's text held a secret
            span.set_attribute(FAILURE_KIND_ATTRIBUTE, failure.kind)
            raise failure from None
        return response.status_code, response.headers, content

    def _secrets(self, *, in_answer: bool = False) -> list[str]:
        """What the request carried that may be a credential, as an error reply could echo
        it: the auth header's value and its token after a scheme (Bearer), and the values of
        the URL's query (a key=...; not an api-version date, shown in the span's URL), those
        of 4 characters or more. An answer's words are left alone (team=support, a key
        "test"): only values of 8 or more, the query's named as a credential (key=, token=)."""
        query = parse_qsl(self._url.query.decode("ascii"))
        if in_answer:
            found = [v for n, v in query if is_secret_name(n) or n.lower() in ("key", "sig")]
        else:
            found = [v for n, v in query if not is_public_query_value(n, v)]
        if (header := self._transport.header) is not None:
            found += [header[1], header[1].split(" ", 1)[-1]]
        return [value for value in found if len(value) >= (8 if in_answer else 4)]

    def _without_secrets(self, exc: Exception) -> Exception:
        """``exc``, or one like it whose text no longer holds what the request carried of a
        secret: a server speaking no HTTP that sends back what it read is quoted in the
        error (``illegal status line: b'POST /chat?key=... HTTP/1.1'``)."""
        text = str(exc)
        scrubbed = text
        query = self._url.query.decode("ascii")
        if query:
            scrubbed = scrubbed.replace(query, redacted_query(query))
        if (header := self._transport.header) is not None:
            value = header[1]
            scrubbed = scrubbed.replace(value, REDACTED)
            scrubbed = scrubbed.replace(repr(value.encode())[2:-1], REDACTED)
        if scrubbed == text:
            return exc
        if isinstance(exc, httpx.HTTPError):
            return type(exc)(scrubbed)
        return RuntimeError(f"{type(exc).__name__}: {scrubbed}")  # any constructor: the text

    def _transport_failure(self, exc: Exception) -> FailureKind | None:
        if isinstance(exc, httpx.TimeoutException):
            return RemoteTimeout(
                f"agent '{self.name}' did not answer within {self.timeout_s:g} s "
                f"({type(exc).__name__})"
            )
        if isinstance(exc, httpx.DecodingError):
            return self._bad("the reply's content encoding does not decode")
        if isinstance(exc, httpx.TransportError):
            # A reset connection's error has no text of its own.
            why = str(exc) or "the connection broke (reset or closed by the agent)"
            return AgentUnreachable(
                f"agent '{self.name}' could not be reached: {type(exc).__name__}: {why}"
            )
        return None

    def _body(self, request: AgentRequest) -> dict[str, Any]:
        if self.spec.contract == "openai":
            return {
                "model": self.spec.model,
                "messages": [{"role": "user", "content": request.message}],
            }
        context = trace.get_current_span().get_span_context()
        return {
            "message": request.message,
            "userId": request.user_id,
            "intent": request.intent,
            "traceId": format(context.trace_id, "032x") if context.is_valid else None,
        }

    def _reply(self, status: int, content: bytes) -> AgentReply:
        try:
            document = json.loads(content)
        except ValueError:
            # Server-sent events: a field, or a comment (OpenRouter's ": OPENROUTER PROCESSING")
            if content.lstrip().startswith((b"data:", b"event:", b":")):
                raise self._bad(
                    "the reply is a stream of server-sent events, not one JSON document: ERS"
                    " asks for no stream, so its server or a proxy in front of it streams anyway"
                ) from None
            raise self._bad("the reply is not JSON") from None
        except RecursionError:
            # Arrays or objects nested deeper than the parser goes: not an answer either.
            raise self._bad("the reply's JSON is nested too deep") from None
        if self.spec.contract == "openai":
            text, confidence = completion_text(self.name, status, document, self._secrets()), 1.0
        elif not isinstance(document, dict) or not isinstance(document.get("response"), str):
            raise self._bad('the reply has no string "response"')
        else:
            text, confidence = document["response"], document.get("confidence", 1.0)
        if (
            isinstance(confidence, bool)
            or not isinstance(confidence, int | float)
            # NaN compares false; an int past any float compares as it is, where
            # math.isfinite would raise OverflowError
            or not 0 <= confidence <= 1
        ):
            raise self._bad('"confidence" must be a number from 0 to 1')
        # A gateway's debug echo of the request is not to hand the user the agent's key.
        text = without(text, self._secrets(in_answer=True))
        return AgentReply(content=text, agent=self.name, confidence=confidence)

    def _bad(self, why: str) -> BadResponse:
        return BadResponse(
            f"agent '{self.name}' broke the {self.spec.contract} contract: {why}", status=200
        )
