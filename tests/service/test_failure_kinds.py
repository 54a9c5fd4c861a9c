"""Failure kinds of remote calls: how a reply is classified, how Retry-After is read, how the
auth file is read, and how the guard treats each kind (retry, breaker, cooldown)."""

from __future__ import annotations

import email.utils
from pathlib import Path

import pytest

from service.agents.auth_file import read_auth_header
from service.agents.base import AgentRequest
from service.agents.failure_kinds import (
    MAX_RETRY_AFTER_S,
    BadRequest,
    CredentialsRejected,
    FailureKind,
    RateLimited,
    ServerError,
    failure_from_response,
    parse_retry_after,
)
from service.agents.specs import HttpAgentSpec
from service.errors import DependencyError
from service.settings import SettingsError
from tests.service.test_guard import Harness, ScriptedAgent

REQUEST = AgentRequest("hello", "user-1")


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 42, usegmt=True), now=now) == 42.0
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0
    assert parse_retry_after("999999") == MAX_RETRY_AFTER_S


@pytest.mark.parametrize(
    "value", [None, "", "soon", "-3", "1.5e3", "Mon, 99 Foo 2026", "\u00b2", "3\u00b2", "\u0663"]
)
def test_an_unreadable_retry_after_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


OPENAI_ERROR = b'{"error": {"message": "too long", "code": "%s"}}'


@pytest.mark.parametrize(
    ("status", "body", "kind", "retryable", "counts"),
    [
        (429, b"", "rate_limit", True, False),
        (500, b"", "server_error", True, True),
        (503, b"<html>busy</html>", "server_error", True, True),
        (408, b"", "timeout", True, True),
        (401, b"", "auth", False, True),
        (403, b"", "auth", False, True),
        (400, b"", "bad_request", False, False),
        (422, b"{}", "bad_request", False, False),
        (400, OPENAI_ERROR % b"context_length_exceeded", "context_length", False, False),
        (400, OPENAI_ERROR % b"content_filter", "content_filter", False, False),
        # A spent quota answers 429 too, but no wait ends it: not retried, and it counts.
        (429, OPENAI_ERROR % b"insufficient_quota", "quota", False, True),
        (404, b"", "client_error", False, True),
        # A model the server does not serve fails every call, whatever status says so.
        (404, OPENAI_ERROR % b"model_not_found", "client_error", False, True),
        (400, OPENAI_ERROR % b"model_not_found", "client_error", False, True),
        (302, b"", "client_error", False, True),  # a moved agent: ERS follows no redirect
        (307, b"", "client_error", False, True),
        # Nested deeper than the JSON parser goes: read as having no error code.
        (502, b"[" * 30_000 + b"]" * 30_000, "server_error", True, True),
    ],
)
def test_an_error_reply_is_classified_by_status_and_error_code(
    status: int, body: bytes, kind: str, retryable: bool, counts: bool
) -> None:
    failure = failure_from_response("helper", status, {}, body)
    assert (failure.kind, failure.retryable, failure.counts_against_breaker) == (
        kind,
        retryable,
        counts,
    )
    assert failure.status == status
    assert "'helper'" in str(failure)
    assert isinstance(failure, DependencyError)


def test_a_rate_limit_carries_its_retry_after_and_the_message_never_the_body() -> None:
    failure = failure_from_response(
        "helper", 429, {"retry-after": "12"}, b'{"echo": "Bearer hunter2"}'
    )
    assert isinstance(failure, RateLimited)
    assert failure.retry_after_s == 12.0
    assert "hunter2" not in str(failure)


@pytest.mark.parametrize(
    "headers,seconds",
    [
        ({"retry-after-ms": "1500"}, 1.5),  # alone: it was not read, and no wait was told
        ({"retry-after-ms": "250", "retry-after": "1"}, 0.25),  # the finer one first
        ({"retry-after-ms": "later", "retry-after": "3"}, 3.0),
        ({"retry-after-ms": "nan"}, None),
        ({"retry-after-ms": "-5"}, 0.0),
    ],
)
def test_a_rate_limits_retry_after_ms_is_read_before_retry_after(
    headers: dict[str, str], seconds: float | None
) -> None:
    """Azure OpenAI says how long to wait in milliseconds too; OpenAI's clients read that
    header first."""
    failure = failure_from_response("helper", 429, headers, b"")
    assert isinstance(failure, RateLimited)
    assert failure.retry_after_s == seconds


def test_a_model_the_server_does_not_serve_names_the_model_setting() -> None:
    message = str(failure_from_response("helper", 404, {}, OPENAI_ERROR % b"model_not_found"))
    assert "model setting" in message
    assert "url and contract" not in message


def spec_with_auth(path: Path) -> HttpAgentSpec:
    return HttpAgentSpec(url="http://127.0.0.1:9/chat", auth_file=path)


@pytest.mark.parametrize(
    "text",
    [
        "Bearer abc\n",
        "Bearer abc\r\n",
        "Bearer abc",
        "Bearer abc \n",
        "\ufeffBearer abc\n",
        " Bearer abc\t",
    ],
)
def test_the_auth_file_loses_one_trailing_newline_a_bom_and_spaces_around(
    tmp_path: Path, text: str
) -> None:
    """Before: a space an editor left at the end, or its byte-order mark, was refused as
    "characters a header cannot carry; only printable ASCII, spaces and tabs"."""
    path = tmp_path / "auth"
    path.write_text(text, encoding="utf-8")
    assert read_auth_header("helper", spec_with_auth(path)) == ("Authorization", "Bearer abc")
    assert read_auth_header("helper", HttpAgentSpec(url="http://127.0.0.1:9/chat")) is None


@pytest.mark.parametrize(
    "given",
    [
        "Bearer sk-INLINE12345",
        "sk-INLINE12345",
        "token abc-INLINE",
        "Bearer eyJINLINE" + "x" * 300,  # longer than a file's name: ENAMETOOLONG
        "INLINE7f3a9c2e4b1d8f6a0c5e",  # a bare key for X-Api-Key
        "wJalrXUtnFEMI/K7MDENG/bPxINLINEKEY",  # a secret with '/' in it
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJINLINE",  # a JWT, dots and all
    ],
)
def test_a_value_given_for_the_auth_files_path_is_not_shown(given: str) -> None:
    """Before: `cannot read Bearer sk-INLINE12345 (/srv/Bearer sk-INLINE12345; ...)`, twice
    in a message that goes to the log."""
    spec = HttpAgentSpec(url="http://127.0.0.1:9/chat", auth_file=given)  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="may be the Authorization header's value") as raised:
        read_auth_header("helper", spec)
    assert "INLINE" not in str(raised.value)


@pytest.mark.parametrize("text", ["", "\n", "Bearer abc\n\n", "Bearer abc\nsecond line\n"])
def test_an_auth_file_must_hold_one_line_and_the_error_never_shows_it(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "auth"
    path.write_text(text)
    with pytest.raises(
        SettingsError, match="invalid setting 'agents.helper.auth_file': .* must hold one line"
    ) as raised:
        read_auth_header("helper", spec_with_auth(path))
    assert "abc" not in str(raised.value)


@pytest.mark.parametrize(
    "given", ["helper-auth-token-2024", "/run/secrets/helper-auth", "./var/helper-auth"]
)
def test_a_path_of_the_usual_kind_is_shown(given: str) -> None:
    spec = HttpAgentSpec(url="http://127.0.0.1:9/chat", auth_file=given)  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="cannot read") as raised:
        read_auth_header("helper", spec)
    assert given.removeprefix("./") in str(raised.value)


def test_a_missing_auth_file_names_the_setting_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(
        SettingsError, match=f"invalid setting 'agents.helper.auth_file': cannot read {path}: "
    ):
        read_auth_header("helper", spec_with_auth(path))


@pytest.mark.parametrize("text", ["Bearer tök-abc\n", "Bearer abc\x00\n", "Bearer a\x7fbc\n"])
def test_an_auth_value_a_header_cannot_carry_stops_the_start_without_showing_it(
    tmp_path: Path, text: str
) -> None:
    """httpx refuses such a value on every call, and the guard took that for an agent that
    could not be reached; the start-up names the setting instead."""
    path = tmp_path / "auth"
    path.write_text(text)
    with pytest.raises(
        SettingsError, match="invalid setting 'agents.helper.auth_file': .* characters a header"
    ) as raised:
        read_auth_header("helper", spec_with_auth(path))
    assert "abc" not in str(raised.value)


@pytest.fixture
def harness() -> Harness:
    return Harness()


async def test_a_refused_request_is_not_retried_and_not_a_breaker_failure(
    harness: Harness,
) -> None:
    agent = ScriptedAgent("helper", [BadRequest("refused", status=400), "ok"])
    guard = harness.guard(agent)
    reply = await guard.handle(REQUEST)
    assert reply.degraded and agent.calls == 1
    assert guard.breaker.snapshot()["failureCount"] == 0
    (span,) = harness.spans.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["ers.failure.kind"] == "bad_request"
    assert span.attributes["http.response.status_code"] == 400


async def test_a_rate_limit_without_retry_after_is_retried_with_backoff_and_no_cooldown(
    harness: Harness,
) -> None:
    agent = ScriptedAgent("helper", [RateLimited("slow down", status=429)])
    guard = harness.guard(agent)
    reply = await guard.handle(REQUEST)
    assert reply.degraded and agent.calls == 3
    assert guard.breaker.snapshot()["failureCount"] == 0
    assert guard.cooldown_remaining() == 0 and guard.available_now()


async def test_a_rate_limit_past_the_budget_cools_down_once_not_per_attempt(
    harness: Harness,
) -> None:
    agent = ScriptedAgent("helper", [RateLimited("wait", status=429, retry_after_s=60.0), "ok"])
    guard = harness.guard(agent)
    assert (await guard.handle(REQUEST)).degraded
    assert (await guard.handle(REQUEST)).degraded
    assert agent.calls == 1
    assert 0 < guard.cooldown_remaining() <= 60
    assert not guard.available_now()


async def test_server_errors_count_like_any_dependency_error(harness: Harness) -> None:
    agent = ScriptedAgent("helper", [ServerError("503", status=503)])
    guard = harness.guard(agent)
    assert (await guard.handle(REQUEST)).degraded
    assert agent.calls == 3
    assert guard.breaker.snapshot()["failureCount"] == 3


async def test_built_in_errors_get_no_failure_kind(harness: Harness) -> None:
    agent = ScriptedAgent("helper", [DependencyError("db down")])
    await harness.guard(agent).handle(REQUEST)
    (span,) = harness.spans.get_finished_spans()
    assert span.attributes is not None
    assert "ers.failure.kind" not in span.attributes
    assert all("ers.failure.kind" not in (e.attributes or {}) for e in span.events)
    assert not isinstance(DependencyError("x"), FailureKind)


async def test_an_agent_behind_an_open_breaker_is_not_available(harness: Harness) -> None:
    guard = harness.guard(ScriptedAgent("helper", ["ok"]))
    assert guard.available_now()
    guard.breaker.force_open(reason="test", source="operator")
    assert not guard.available_now()


async def test_a_failed_canary_carries_its_failure_kind(harness: Harness) -> None:
    agent = ScriptedAgent("helper", [CredentialsRejected("credentials rejected", status=403)])
    guard = harness.guard(agent)
    with pytest.raises(CredentialsRejected):
        await guard.handle(AgentRequest("canary", "ers-system-test", synthetic=True))
    (span,) = harness.spans.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["ers.failure.kind"] == "auth"
    assert span.attributes["http.response.status_code"] == 403
