from __future__ import annotations

import pytest

from telemetry.fingerprint import (
    DEFAULT_TEMPLATE,
    FingerprintTemplate,
    TemplateError,
    normalise_message,
    short_type,
)
from telemetry.span_record import SpanRecord
from tests.telemetry.conftest import error_record


@pytest.mark.parametrize(
    ("message", "normalised"),
    [
        ("Database connection timeout after 5023 ms", "Database connection timeout after <num> ms"),
        ("Memory usage exceeded 90%", "Memory usage exceeded <num>%"),
        ("retry 3 of 5 took 0.25 s", "retry <num> of <num> took <num> s"),
        ("user 8f14e45f-ceea-467f-a0e6-1c3a4b5d6e7f not found", "user <uuid> not found"),
        ("object at 0x7f3a2b1c9d40 is gone", "object at <hex> is gone"),
        ("digest deadbeef12345678 mismatch", "digest <hex> mismatch"),
        ("no row for key 'abc' in \"budgets\"", "no row for key <str> in <str>"),
        ("request req_8f3a91 failed", "request <id> failed"),
        ("incident INC_1700000000000_ab12cd reopened", "incident <id> reopened"),
        ("session a1b2c3d4e5z expired", "session <id> expired"),
        ("connect to 10.0.0.7:5432 refused", "connect to <ip> refused"),
        ("mail to ops@example.com bounced", "mail to <email> bounced"),
        ("at 2026-11-28T13:54:51Z the job died", "at <ts> the job died"),
        ("too   many\n spaces", "too many spaces"),
        ("utf8 decode failed on http2 stream", "utf8 decode failed on http2 stream"),
        # A number with its unit glued on: "30s" and "31s" were two incidents, and "1.5s"
        # became "<num>.5s".
        ("read timed out after 30s", "read timed out after <num>s"),
        ("read timed out after 1.5s", "read timed out after <num>s"),
        ("query took 1200ms", "query took <num>ms"),
        ("sha256 check of the v2 api failed", "sha256 check of the v2 api failed"),
        ("upstream answered 4xx", "upstream answered 4xx"),
        ("upstream answered 45xx after 1.25s", "upstream answered 45xx after <num>s"),
        ("upstream answered 5xx 3 times", "upstream answered 5xx <num> times"),
        # Short hex ids, a git commit's among them: one incident, not one per commit.
        ("deploy of 3f2a1bc failed", "deploy of <hex> failed"),
        ("deploy of 9e8d7c6 failed", "deploy of <hex> failed"),
        ("job 5f3a9c failed", "job <hex> failed"),
        ("job a1b2c3 failed", "job <hex> failed"),
        ("sent 123456b in 12s", "sent <num>b in <num>s"),
        ("the cafe is decade old", "the cafe is decade old"),
        # A prefixed random id without a digit, as often as with one.
        ("no customer cus_NffrFeUfNVxHib", "no customer <id>"),
        ("no customer cus_Nffr8eUfNV2Hib", "no customer <id>"),
        ("session sess_AbCdEfGhIjKl expired", "session <id> expired"),
        (
            "max_connections_exceeded on db_primaryReplica",
            "max_connections_exceeded on db_primaryReplica",
        ),
        ("user_not_found: lookup_failed", "user_not_found: lookup_failed"),
        # A span id's 16 hex characters are a <hex> with a letter or without one: all-digit,
        # it was a <num> (or an <id> after a dash), an incident of its own.
        ("span 4a2f9c0e7b1d3e58 lost", "span <hex> lost"),
        ("span 4829105738201938 lost", "span <hex> lost"),
        ("span-4829105738201938 lost", "span-<hex> lost"),
        ("trace 48291057382019384829105738201938 lost", "trace <uuid> lost"),
        # Numbers of other lengths stay numbers, long ones too.
        ("sent 12345678 bytes", "sent <num> bytes"),
        ("at 1700000000000 ms", "at <num> ms"),
        ("ledger 1234567890123456789 full", "ledger <num> full"),
        # Floats in scientific notation are numbers; they were <num>e3, <num>.<hex>, <id>.
        ("loss 1.2e3 over", "loss <num> over"),
        ("loss 1.2345e6 over", "loss <num> over"),
        ("loss 1.2345678E7 over", "loss <num> over"),
        ("loss 1.5e-07 over", "loss <num> over"),
        ("loss 1e-05 over", "loss <num> over"),
        ("loss -1e+16 over", "loss <num> over"),
        ("loss 1.200000e+03 over", "loss <num> over"),
        ("took 2.5e3ms", "took <num>ms"),
        ("deploy of 4821e93 failed", "deploy of <hex> failed"),
    ],
)
def test_variable_parts_of_messages_are_normalised_away(message: str, normalised: str) -> None:
    assert normalise_message(message) == normalised


def test_normalised_messages_are_capped() -> None:
    assert len(normalise_message("word " * 100)) <= 160


@pytest.mark.parametrize(
    ("exception_type", "short"),
    [
        ("service.resilience.faults.SimulatedDatabaseError", "SimulatedDatabaseError"),
        ("TimeoutError", "TimeoutError"),
        ("java.net.SocketException", "SocketException"),
    ],
)
def test_short_type_drops_the_module(exception_type: str, short: str) -> None:
    assert short_type(exception_type) == short


def test_template_renders_placeholders_from_the_record_and_the_classification() -> None:
    template = FingerprintTemplate.parse(
        "{component}|{type}|{severity}|{exception.type}|{message}|{span.name}|"
        "{service.name}|{attributes.tier}|{resource.region}"
    )
    record = error_record(
        "agent.npa",
        "pkg.Boom",
        "failed after 3 tries",
        attributes={"tier": "gold"},
        resource={"region": "eu"},
    )
    rendered = template.render(record, {"component": "NPA", "type": "agent", "severity": "medium"})
    assert rendered == "NPA|agent|medium|Boom|failed after <num> tries|agent.npa|ers|gold|eu"


def test_unknown_placeholders_are_refused() -> None:
    with pytest.raises(TemplateError, match=r"unknown placeholder \{colour\}"):
        FingerprintTemplate.parse("{component}:{colour}")


def test_failures_without_words_are_told_apart_by_their_span() -> None:
    cart, pay = (
        SpanRecord.from_dict(
            {
                "name": name,
                "status": {"code": "ERROR"},
                "attributes": {"error.type": "500", "http.route": name.split()[1]},
                "resource": {"service.name": "shop"},
            }
        )
        for name in ("GET /cart", "POST /pay")
    )
    template = FingerprintTemplate.parse(DEFAULT_TEMPLATE)
    values = {"component": "shop", "type": "system", "severity": "high"}
    # Before: both were shop:system:500: , one incident named after whichever came first.
    assert template.render(cart, values) == "shop:system:500:<span GET /cart>"
    assert template.render(pay, values) != template.render(cart, values)
