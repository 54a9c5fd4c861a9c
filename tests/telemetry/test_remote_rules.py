"""The default rules for a remote agent's failure kinds, over the span attributes the guard
sets (ers.failure.kind, http.response.status_code) and the exceptions it records."""

from __future__ import annotations

import pytest

from telemetry.classifier import Classifier
from telemetry.span_record import SpanRecord
from tests.telemetry.conftest import error_record

BASES = ["FailureKind", "DependencyError", "ErsError", "Exception"]


def remote_failure(kind: str, exception: str, message: str, **attributes: object) -> SpanRecord:
    return error_record(
        "agent.helper",
        exception,
        message,
        attributes={
            "ers.agent": "helper",
            "ers.failure.kind": kind,
            "ers.exception.bases": BASES,
            **attributes,
        },
    )


@pytest.mark.parametrize(
    ("kind", "exception", "rule", "severity", "protocol"),
    [
        ("auth", "CredentialsRejected", "remote-credentials-rejected", "critical", "LOG_ONLY"),
        ("rate_limit", "RateLimited", "remote-rate-limited", "medium", "LOG_ONLY"),
        ("quota", "QuotaExhausted", "remote-quota-exhausted", "high", "LOG_ONLY"),
        ("context_length", "ContextLengthExceeded", "remote-context-length", "low", "LOG_ONLY"),
        ("content_filter", "ContentFiltered", "remote-content-filter", "low", "LOG_ONLY"),
        ("refusal", "ModelRefused", "remote-refusal", "low", "LOG_ONLY"),
        ("truncated", "Truncated", "remote-truncated", "medium", "LOG_ONLY"),
        ("bad_request", "BadRequest", "remote-bad-request", "medium", "LOG_ONLY"),
        ("client_error", "ClientError", "remote-client-error", "high", "LOG_ONLY"),
        ("tool_calls", "ToolCallRequested", "remote-tool-calls", "high", "LOG_ONLY"),
        ("bad_response", "BadResponse", "bad-response", "high", "LOG_ONLY"),
        ("server_error", "ServerError", "remote-server-error", "high", "SERVICE_DEGRADATION"),
        ("timeout", "RemoteTimeout", "remote-timeout", "medium", "AGENT_FAILURE"),
        ("connection", "AgentUnreachable", "remote-unreachable", "high", "SERVICE_DEGRADATION"),
    ],
)
def test_each_failure_kind_has_its_rule(
    default_classifier: Classifier,
    kind: str,
    exception: str,
    rule: str,
    severity: str,
    protocol: str,
) -> None:
    # A message with words other rules look for (invalid request, database) must not win.
    record = remote_failure(kind, exception, "agent 'helper': invalid request to the database")
    found = default_classifier.classify(record)
    assert (found.rule, found.severity, found.protocol) == (rule, severity, protocol)
    assert found.component == "helper"


def test_rejected_credentials_are_one_incident_per_agent_whatever_the_status(
    default_classifier: Classifier,
) -> None:
    fingerprints = {
        default_classifier.classify(
            remote_failure(
                "auth",
                "CredentialsRejected",
                f"credentials rejected: agent 'helper' answered HTTP {status}",
                **{"http.response.status_code": status},
            )
        ).fingerprint
        for status in (401, 403, 401)
    }
    other_agent = error_record(
        "agent.planner",
        "CredentialsRejected",
        "credentials rejected: agent 'planner' answered HTTP 401",
        attributes={"ers.agent": "planner", "ers.failure.kind": "auth"},
    )
    assert len(fingerprints) == 1
    assert default_classifier.classify(other_agent).fingerprint not in fingerprints


def test_a_built_in_agents_timeout_keeps_its_rule(default_classifier: Classifier) -> None:
    record = error_record("agent.budget", "TimeoutError", "", attributes={"ers.agent": "budget"})
    assert default_classifier.classify(record).rule == "agent-timeout"
