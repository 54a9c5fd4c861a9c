"""An agent reached over HTTP: ERS's own small JSON contract, or OpenAI chat completions.

One pooled ``httpx.AsyncClient`` per agent, instrumented on its own (not globally) so that
each attempt is a client span under the guard's ``agent.<name>`` span and carries a W3C
``traceparent`` to the agent. The client never retries (the transport makes one try, and
httpx has no retries of its own): the guard is the only retry loop, so attempts, backoff
and the time budget are counted in one place. Failures are raised as the kinds of
``service.agents.failure_kinds``, which the guard reads.

The auth header's value is read from ``auth_file`` and added by the transport, below the
instrumentation: the header is never in what the instrumentation sees (so no
``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*`` setting can put it in a span), and it is in
no message, log or span of ours.

Contracts:

- ``ers``: POST ``url`` with ``{"message", "userId", "intent", "traceId"}`` (``intent`` and
  ``traceId`` may be null), answer ``{"response": str, "confidence": float in [0, 1]}``
  (``confidence`` optional);
- ``openai``: POST ``{url}/v1/chat/completions`` with ``{"model", "messages": [{"role":
  "user", "content": message}]}``, answer ``choices[0].message.content``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.trace import TracerProvider

from service.agents.base import AgentReply, AgentRequest
from service.agents.failure_kinds import (
    FAILURE_KIND_ATTRIBUTE,
    AgentUnreachable,
    BadResponse,
    RemoteTimeout,
    failure_from_response,
)
from service.agents.specs import HttpAgentSpec
from service.settings import SettingsError

# The guard's agent.<name> span is the incident for a failed call; the attempt's client
# span under it is not one more (see service.incidents.service.NOT_AN_INCIDENT).
NOT_AN_INCIDENT = "ers.not_an_incident"
# A reply bigger than this is not a chat answer.
MAX_REPLY_BYTES = 1_048_576
# What an auth header's value may hold: visible ASCII, spaces and tabs.
HEADER_VALUE = re.compile(r"[\x21-\x7e]([\t\x20-\x7e]*[\x21-\x7e])?")


class _AuthTransport(httpx.AsyncHTTPTransport):
    """Adds the auth header as the request leaves; instrumentation wraps this transport, so
    it sees the request before the header is there."""

    def __init__(self, header: tuple[str, str] | None, **options: Any) -> None:
        super().__init__(**options)
        self._header = header

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._header is not None:
            request.headers[self._header[0]] = self._header[1]
        return await super().handle_async_request(request)


def read_auth_header(
    name: str, spec: HttpAgentSpec, *, private: bool = False
) -> tuple[str, str] | None:
    """The auth header (name, value) from ``spec.auth_file``, one trailing newline removed;
    None without a file. With ``private`` (production), a file that group or others may
    read is refused, as the restic password file is. Raises SettingsError naming the
    setting and the file, never its text."""
    if spec.auth_file is None:
        return None
    path = Path(spec.auth_file)
    key = f"invalid setting 'agents.{name}.auth_file'"
    try:
        mode = path.stat().st_mode & 0o777
        if private and mode & 0o077:
            raise SettingsError(f"{key}: {path} has mode {mode:o}; run: chmod 600 {path}")
        value = path.read_text()
    except OSError as exc:
        raise SettingsError(
            f"{key}: cannot read {path}: {exc.strerror}; write the whole value of its "
            f"{spec.auth_header} header there"
        ) from None
    except UnicodeDecodeError:
        raise SettingsError(f"{key}: {path} is not UTF-8 text") from None
    if value.endswith("\n"):
        value = value[:-1]
        if value.endswith("\r"):
            value = value[:-1]
    if not value or "\n" in value or "\r" in value:
        raise SettingsError(
            f"{key}: {path} must hold one line, the whole value of its {spec.auth_header} "
            "header (e.g. 'Bearer <token>')"
        )
    if not HEADER_VALUE.fullmatch(value):
        # httpx would refuse it on every call, which the guard would take for an agent
        # that cannot be reached.
        raise SettingsError(
            f"{key}: {path} holds characters a header cannot carry; only printable ASCII, "
            "spaces and tabs"
        )
    return spec.auth_header, value


class RemoteAgent:
    """An ``Agent`` whose ``handle`` is one HTTP call to ``spec.url``."""

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
        base = str(spec.url)
        self.url = base.rstrip("/") + "/v1/chat/completions" if spec.contract == "openai" else base
        transport = _AuthTransport(
            read_auth_header(name, spec, private=private_auth_file),
            retries=0,
            limits=httpx.Limits(
                max_connections=spec.max_connections,
                max_keepalive_connections=spec.max_connections,
            ),
        )
        # trust_env off: proxies from the environment would get transports of their own,
        # without the auth header and the instrumentation.
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(self.timeout_s),
            follow_redirects=False,
            trust_env=False,
        )
        HTTPXClientInstrumentor.instrument_client(
            self._client,
            tracer_provider=tracer_provider,
            request_hook=_on_request,
            response_hook=self._on_response,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def handle(self, request: AgentRequest) -> AgentReply:
        try:
            async with self._client.stream("POST", self.url, json=self._body(request)) as response:
                status = response.status_code
                content = await _read_at_most(response, MAX_REPLY_BYTES)
        except httpx.TimeoutException as exc:
            raise RemoteTimeout(
                f"agent '{self.name}' did not answer within {self.timeout_s:g} s "
                f"({type(exc).__name__})"
            ) from None
        except httpx.DecodingError:
            raise self._bad("the reply's content encoding does not decode") from None
        except httpx.TransportError as exc:
            raise AgentUnreachable(
                f"agent '{self.name}' could not be reached: {type(exc).__name__}: {exc}"
            ) from None
        if status >= 400:
            raise failure_from_response(self.name, status, response.headers, content or b"")
        if not 200 <= status < 300:
            raise BadResponse(
                f"agent '{self.name}' answered HTTP {status}; expected 200", status=status
            )
        if content is None:
            raise self._bad(f"the reply is over {MAX_REPLY_BYTES} bytes")
        return self._reply(content)

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

    def _reply(self, content: bytes) -> AgentReply:
        try:
            document = json.loads(content)
        except ValueError:
            raise self._bad("the reply is not JSON") from None
        except RecursionError:
            # Arrays or objects nested deeper than the parser goes: not an answer either.
            raise self._bad("the reply's JSON is nested too deep") from None
        if self.spec.contract == "openai":
            try:
                text = document["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                raise self._bad("the reply has no choices[0].message.content") from None
            if not isinstance(text, str):
                raise self._bad("choices[0].message.content is not a string")
            return AgentReply(content=text, agent=self.name)
        if not isinstance(document, dict) or not isinstance(document.get("response"), str):
            raise self._bad('the reply has no string "response"')
        confidence = document.get("confidence", 1.0)
        if (
            isinstance(confidence, bool)
            or not isinstance(confidence, int | float)
            or not (math.isfinite(confidence) and 0 <= confidence <= 1)
        ):
            raise self._bad('"confidence" must be a number from 0 to 1')
        return AgentReply(content=document["response"], agent=self.name, confidence=confidence)

    def _bad(self, why: str) -> BadResponse:
        return BadResponse(
            f"agent '{self.name}' broke the {self.spec.contract} contract: {why}", status=200
        )

    async def _on_response(self, span: trace.Span, request: Any, response: Any) -> None:
        """The failure kind of an error status on the attempt's client span, for a reader
        of the trace (the body is still a stream here: an error code in it refines the
        kind on the agent span)."""
        if response.status_code >= 400:
            kind = failure_from_response(self.name, response.status_code, {}, b"").kind
            span.set_attribute(FAILURE_KIND_ATTRIBUTE, kind)


async def _read_at_most(response: httpx.Response, limit: int) -> bytes | None:
    """The body, or None when it is longer than ``limit`` (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _on_request(span: trace.Span, request: Any) -> None:
    span.set_attribute(NOT_AN_INCIDENT, "reported by the agent span")
