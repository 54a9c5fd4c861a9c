"""What went wrong in a call to a remote agent, by kind, and what the guard does about it.

Each kind is an exception class that says whether another attempt may help (``retryable``),
whether the failure says the agent is unhealthy (``counts_against_breaker``) and, for a rate
limit, how long the agent asked to be left alone (``retry_after_s``). The guard reads these
instead of its ``retry_on`` classes; errors that are not a ``FailureKind`` (the built-in
agents') keep the guard's usual handling.

| kind | from | retried | breaker failure |
|---|---|---|---|
| rate_limit | 429 | after Retry-After, if it fits the call's budget; else cooldown | no |
| quota | error code insufficient_quota (a 429 that waiting does not end) | no | yes |
| server_error | 5xx, or a completion's finish_reason error, abort, ... | yes | yes |
| timeout | no answer within the attempt's time limit, 408 | yes | yes |
| connection | refused, reset, DNS | yes | yes |
| auth | 401, 403 | no | yes |
| bad_request | 400, 413, 422 | no | no |
| context_length | error code context_length_exceeded | no | no |
| content_filter | error code content_filter, or finish_reason content_filter | no | no |
| refusal | a completion whose message.refusal is set (the model declined) | no | no |
| truncated | a completion's finish_reason length or model_length (cut off) | no | no |
| client_error | any other 4xx (wrong URL, wrong method); error code model_not_found | no | yes |
| tool_calls | a completion asking for a tool call (ERS sends no tools) | no | yes |
| bad_response | a 2xx whose body breaks the contract (an error object, unless by code) | no | yes |

A malformed reply is not retried: it comes from an agent that speaks another contract (or
another version of it), and the same request gets the same reply again. A 2xx holding an
error object (a proxy's answer to a failed request) whose code says a rate limit or a
failure of the server is not a malformed reply: it gets the kind of the status that code
stands for (``STATUS_OF_ERROR_CODE``), as a rate_limit without Retry-After or a
server_error.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from service.errors import DependencyError
from telemetry.redaction import without

# Longest Retry-After taken at its word; a larger one (or a date far ahead) is cut to this.
MAX_RETRY_AFTER_S = 3600.0
# Error bodies are read for an error code; past this many bytes they are not parsed.
MAX_ERROR_BODY_BYTES = 65_536

# An error code as providers write them (context_length_exceeded, invalid_request_error):
# anything else is the agent's free text, which is not put in messages and incidents (it
# may be long, span lines, or differ on every reply and split one failure into many).
ERROR_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")

# The error codes of a 2xx error object (a proxy such as LiteLLM or OpenRouter answering a
# failed request with a 200) that say what an error status would have said, and the status
# each stands for: the call gets that status's kind and treatment. Only a rate limit and a
# failure of the server or its upstream, which a wait or another attempt may end, where a
# broken reply comes the same again; any other code stays a bad_response naming it.
#   rate_limit_exceeded (OpenAI's code for a 429), rate_limit_error (Anthropic's type for it)
#   server_error (OpenAI's type for a 500), overloaded_error (Anthropic's, its 529),
#   service_unavailable (a 503 by name)
# and the status itself as the code: "429" and "500" to "599", as LiteLLM's proxy writes it
# ("code": "429"), or a number, as OpenRouter writes an error met after its 200 was sent.
# A 200 carries no Retry-After for it: the rate limit is retried after the usual backoff.
STATUS_OF_ERROR_CODE = {
    "rate_limit_exceeded": 429,
    "rate_limit_error": 429,
    "server_error": 500,
    "overloaded_error": 529,
    "service_unavailable": 503,
}

# What to check when an agent's credentials are rejected, by where they come from.
CREDENTIALS_IN_AUTH_FILE = (
    "check the file its auth_file setting names (read again at the next call)"
)
CREDENTIALS_IN_URL = (
    "check the key in the query of its url setting (read at start: restart ers serve after"
    " changing it), or send it from an auth_file instead, read again at the next call"
)
NO_CREDENTIALS = (
    "it was sent none: write the whole value of its auth header (e.g. 'Bearer <key>') to a"
    " file and name it in its auth_file setting"
)


@dataclass(frozen=True)
class NextSteps:
    """What an error reply tells the operator to check, by how the agent is set up."""

    credentials: str = CREDENTIALS_IN_AUTH_FILE  # on a 401 or 403
    settings: str = "url and contract"  # on any other 4xx: the settings that may be wrong


# Span attribute naming the kind, read by the classification rules.
FAILURE_KIND_ATTRIBUTE = "ers.failure.kind"
HTTP_STATUS_ATTRIBUTE = "http.response.status_code"


class FailureKind(DependencyError):
    """A remote agent's call failed in a way the guard knows how to treat."""

    kind: ClassVar[str] = "remote"
    retryable: ClassVar[bool] = True
    counts_against_breaker: ClassVar[bool] = True

    def __init__(
        self, message: str, *, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s

    def span_attributes(self) -> dict[str, str | int]:
        """What the classification rules read of this failure on the call's span."""
        if self.status is None:
            return {FAILURE_KIND_ATTRIBUTE: self.kind}
        return {FAILURE_KIND_ATTRIBUTE: self.kind, HTTP_STATUS_ATTRIBUTE: self.status}


class RateLimited(FailureKind):
    kind = "rate_limit"
    counts_against_breaker = False
    # The call's outcome in ers_agent_calls_total: not "failure", which AgentErrorRatioHigh
    # counts to isolate an agent that is only busy, or only asked too much.
    call_outcome = "refused"


class QuotaExhausted(FailureKind):
    """The provider's quota or billing limit is spent: every call fails until someone raises
    it, so waiting (a retry, a cooldown) does not help, and the breaker may stop the calls."""

    kind = "quota"
    retryable = False


class ServerError(FailureKind):
    kind = "server_error"


class RemoteTimeout(FailureKind, TimeoutError):
    kind = "timeout"


class AgentUnreachable(FailureKind, ConnectionError):
    kind = "connection"


class CredentialsRejected(FailureKind):
    kind = "auth"
    retryable = False


class BadRequest(FailureKind):
    """The agent refused what was asked: the same request gets the same answer, and the
    agent is no less healthy for it."""

    kind = "bad_request"
    retryable = False
    counts_against_breaker = False
    call_outcome = "refused"


class ContextLengthExceeded(BadRequest):
    kind = "context_length"


class ContentFiltered(BadRequest):
    kind = "content_filter"


class ModelRefused(BadRequest):
    """The model declined to answer (an OpenAI completion's ``message.refusal``): a refusal of
    this request, as a content filter's is."""

    kind = "refusal"


class Truncated(BadRequest):
    """The model stopped at its output token limit (``finish_reason: length``): the answer is
    cut off, no answer to pass on as whole. A shorter answer to another question fits, so
    the agent is no less healthy for it."""

    kind = "truncated"


class ClientError(FailureKind):
    kind = "client_error"
    retryable = False


class BadResponse(FailureKind):
    kind = "bad_response"
    retryable = False


class ToolCallRequested(BadResponse):
    """The model asked for a tool call. ERS sends no tools and runs none, so they come from
    the agent's server or a proxy in front of it: the agent's setup, not this request."""

    kind = "tool_calls"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None when
    absent or unreadable. Negative waits become 0, long ones MAX_RETRY_AFTER_S."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():  # "²" is a digit to str.isdigit, not to float
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _retry_after_ms(value: str | None) -> float | None:
    """Seconds from a ``retry-after-ms`` header (Azure OpenAI's, read first by OpenAI's own
    clients: finer than Retry-After, or alone); None when absent or not a number."""
    try:
        milliseconds = float(value or "")
    except ValueError:
        return None
    if not math.isfinite(milliseconds):
        return None
    return min(max(milliseconds / 1000, 0.0), MAX_RETRY_AFTER_S)


def error_code(body: bytes) -> str | None:
    """The OpenAI-compatible ``error.code`` (or ``error.type``) of an error body, if any."""
    if not body or len(body) > MAX_ERROR_BODY_BYTES:
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return None
    return code_of_error(document.get("error") if isinstance(document, dict) else None)


def code_of_error(error: object) -> str | None:
    """The ``code`` (or ``type``) of an OpenAI-compatible ``error`` object, if it is one."""
    if not isinstance(error, dict):
        return None
    for key in ("code", "type"):
        code = error.get(key)
        if isinstance(code, str) and ERROR_CODE.fullmatch(code):
            return code
    return None


def failure_from_response(
    agent: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str] = (),
    steps: NextSteps = NextSteps(),
) -> FailureKind:
    """The kind of an error reply (status 300 and up: a redirect is a wrong url). The message
    names the agent, the status and the error code, never the body (it may echo what was
    sent); the code too may echo what was sent, so each of ``secrets`` (the credentials the
    request carried) in it is replaced. ``steps`` says what to check, by the agent's setup."""
    code = _without_secrets(error_code(body), secrets)
    said = f"HTTP {status}" + (f" ({code})" if code else "")
    failure = _failure_of_code(agent, said, code, status)
    if failure is not None:
        return failure
    if status == 429:
        retry_after = _retry_after_ms(headers.get("retry-after-ms"))
        if retry_after is None:
            retry_after = parse_retry_after(headers.get("retry-after"))
        wait = f"; it asks to wait {retry_after:g} s" if retry_after is not None else ""
        return RateLimited(
            f"agent '{agent}' is rate limited ({said}){wait}",
            status=status,
            retry_after_s=retry_after,
        )
    if status in (401, 403):
        return CredentialsRejected(
            f"credentials rejected: agent '{agent}' answered {said}; {steps.credentials}",
            status=status,
        )
    if status == 408:
        return RemoteTimeout(f"agent '{agent}' answered {said}: it timed out", status=status)
    if status in (400, 413, 422):
        return BadRequest(f"agent '{agent}' refused the request: {said}", status=status)
    if status >= 500:
        return ServerError(f"agent '{agent}' failed: {said}", status=status)
    if status < 400:
        return ClientError(
            f"agent '{agent}' answered {said}, a redirect, which ERS does not follow: set its"
            " url to where the agent answers now",
            status=status,
        )
    return ClientError(
        f"agent '{agent}' answered {said}; check its {steps.settings} settings", status=status
    )


def failure_from_error_object(
    agent: str, status: int, error: object, secrets: Sequence[str] = ()
) -> FailureKind:
    """The kind of a 2xx whose body is an ``{"error": ...}`` object instead of a completion,
    as some proxies answer a failed request: by its error code as for an error status, or as
    the status the code stands for (``STATUS_OF_ERROR_CODE``), else a ``BadResponse`` naming
    the code."""
    number = error.get("code") if isinstance(error, dict) else None
    if type(number) is int and 100 <= number <= 599:  # a status as a number (OpenRouter)
        code: str | None = str(number)
    else:
        code = _without_secrets(code_of_error(error), secrets)
    said = f"HTTP {status} with an error object" + (f" ({code})" if code else "")
    failure = _failure_of_code(agent, said, code, status)
    if failure is not None:
        return failure
    meant = _status_of_code(code)
    if meant == 429:
        return RateLimited(f"agent '{agent}' is rate limited ({said})", status=status)
    if meant is not None and 500 <= meant <= 599:
        return ServerError(f"agent '{agent}' failed: {said}", status=status)
    return BadResponse(
        f"agent '{agent}' answered {said} instead of a completion: its server, or a proxy in "
        "front of it, failed the request",
        status=status,
    )


def _status_of_code(code: str | None) -> int | None:
    """The status an error object's code stands for: a status written as the code, or one
    of ``STATUS_OF_ERROR_CODE``."""
    if code is None:
        return None
    if len(code) == 3 and code.isdigit():
        return int(code)
    return STATUS_OF_ERROR_CODE.get(code)


def _without_secrets(code: str | None, secrets: Sequence[str]) -> str | None:
    # An error code may echo what was sent: each credential the request carried is replaced.
    return without(code, secrets) if code else code


def _failure_of_code(agent: str, said: str, code: str | None, status: int) -> FailureKind | None:
    """The kind an error code names, whatever the status it came with."""
    if code == "context_length_exceeded":
        return ContextLengthExceeded(
            f"agent '{agent}' answered {said}: the conversation is longer than its model's "
            "context window",
            status=status,
        )
    if code in ("content_filter", "content_policy_violation"):
        return ContentFiltered(
            f"agent '{agent}' answered {said}: its provider's content filter refused the message",
            status=status,
        )
    if code == "model_not_found":
        # A 404 from OpenAI and Groq, a 400 from others: either way no call can succeed until
        # the settings change, and the url and contract are not what is wrong.
        return ClientError(
            f"agent '{agent}' answered {said}: its server serves no model of the name its model"
            " setting gives; set model to one the server lists (GET /v1/models)",
            status=status,
        )
    if code == "insufficient_quota":
        return QuotaExhausted(
            f"agent '{agent}' answered {said}: its provider's quota or billing limit is spent;"
            " every call fails until it is raised",
            status=status,
        )
    return None
