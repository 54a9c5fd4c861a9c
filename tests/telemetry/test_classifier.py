from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from telemetry.classifier import Classifier, RulesError, load_rules, replay_stored
from telemetry.rule_conditions import parse_rules
from tests.telemetry.conftest import error_record

DB_BASES = ["DependencyError", "ErsError", "Exception"]

# (span name, exception type, message, attributes) → (severity, type, protocol, recoverable)
SEED_AND_DEFAULT_CASES = [
    pytest.param(
        "agent.bma",
        "service.resilience.faults.SimulatedDatabaseError",
        "Database connection timeout",
        {"ers.agent": "BMA", "ers.exception.bases": DB_BASES},
        ("high", "database", "SERVICE_DEGRADATION", True),
        id="seed-database-timeout",
    ),
    pytest.param(
        "ers.core",
        "RuntimeError",
        "Uncaught exception in core system",
        {},
        ("critical", "system", "CRITICAL_SYSTEM_FAILURE", False),
        id="seed-core-span",
    ),
    pytest.param(
        "startup",
        "KeyError",
        "missing",
        {"ers.component": "core"},
        ("critical", "system", "CRITICAL_SYSTEM_FAILURE", False),
        id="core-component-attribute",
    ),
    pytest.param(
        "agent.npa",
        "service.resilience.faults.SimulatedCoreFailure",
        "Uncaught exception in core system",
        {"ers.agent": "NPA", "ers.exception.bases": ["RuntimeError", "Exception"]},
        ("critical", "system", "CRITICAL_SYSTEM_FAILURE", False),
        id="seed-core-message-inside-an-agent",
    ),
    pytest.param(
        "health.memory",
        "service.health.checks.MemoryPressure",
        "Memory usage exceeded 90%",
        {"ers.check": "memory", "ers.component": "system"},
        ("high", "resource", "RESOURCE_EXHAUSTION", True),
        id="seed-memory-check",
    ),
    pytest.param(
        "agent.wpa",
        "service.resilience.faults.SimulatedMemoryPressure",
        "Memory usage exceeded 90%",
        {"ers.agent": "WPA", "ers.exception.bases": ["MemoryError", "Exception"]},
        ("high", "resource", "RESOURCE_EXHAUSTION", True),
        id="memory-error-by-base-class",
    ),
    pytest.param(
        "agent.npa",
        "service.resilience.faults.SimulatedAgentCrash",
        "Agent processing failure",
        {"ers.agent": "NPA", "ers.exception.bases": ["AgentFailure", "ErsError", "Exception"]},
        ("medium", "agent", "AGENT_FAILURE", True),
        id="seed-agent-failure",
    ),
    pytest.param(
        "agent.npa",
        "service.errors.UserInputError",
        "the message is empty",
        {"ers.agent": "NPA", "ers.exception.bases": ["ErsError", "Exception"]},
        ("low", "validation", "LOG_ONLY", True),
        id="validation-in-an-agent-is-low",
    ),
    pytest.param(
        "POST /chat",
        "ValueError",
        "Validation error: field userId",
        {},
        ("low", "validation", "LOG_ONLY", True),
        id="validation-by-message",
    ),
    pytest.param(
        "agent.wpa",
        "TimeoutError",
        "Agent call timed out",
        {"ers.agent": "WPA", "ers.exception.bases": ["OSError", "Exception"]},
        ("medium", "timeout", "AGENT_FAILURE", True),
        id="agent-timeout",
    ),
    pytest.param(
        "agent.npa",
        "service.resilience.faults.SimulatedNetworkError",
        "Connection refused by upstream service",
        {"ers.agent": "NPA", "ers.exception.bases": ["DependencyError", "ConnectionError"]},
        ("high", "network", "SERVICE_DEGRADATION", True),
        id="network-by-base-class",
    ),
    pytest.param(
        "GET /orders",
        "java.net.SocketException",
        "Connection reset by peer",
        {},
        ("high", "network", "SERVICE_DEGRADATION", True),
        id="network-from-another-service",
    ),
    pytest.param(
        "worker.job",
        "KeyError",
        "'x'",
        {},
        ("medium", "system", "LOG_ONLY", True),
        id="default",
    ),
]


@pytest.mark.parametrize(
    ("name", "exception_type", "message", "attributes", "expected"), SEED_AND_DEFAULT_CASES
)
def test_default_rules_classify_as_the_seed_says(
    default_classifier: Classifier,
    name: str,
    exception_type: str,
    message: str,
    attributes: dict,
    expected: tuple,
) -> None:
    record = error_record(name, exception_type, message, attributes=attributes)
    result = default_classifier.classify(record)
    assert (result.severity, result.type, result.protocol, result.recoverable) == expected


def test_component_comes_from_agent_then_component_then_service(
    default_classifier: Classifier,
) -> None:
    both = error_record(attributes={"ers.agent": "NPA", "ers.component": "stores"})
    component_only = error_record(name="x", attributes={"ers.component": "stores"})
    neither = error_record(name="x", resource={"service.name": "billing"})
    assert default_classifier.classify(both).component == "NPA"
    assert default_classifier.classify(component_only).component == "stores"
    assert default_classifier.classify(neither).component == "billing"


def test_failures_differing_only_in_numbers_share_a_fingerprint(
    default_classifier: Classifier,
) -> None:
    first = error_record(
        message="Database connection timeout after 5023 ms", attributes={"ers.agent": "BMA"}
    )
    second = error_record(
        message="Database connection timeout after 17 ms", attributes={"ers.agent": "BMA"}
    )
    other_agent = error_record(
        message="Database connection timeout after 17 ms", attributes={"ers.agent": "NPA"}
    )
    fingerprint = default_classifier.classify(first).fingerprint
    assert fingerprint == "BMA:database:RuntimeError:Database connection timeout after <num> ms"
    assert default_classifier.classify(second).fingerprint == fingerprint
    assert default_classifier.classify(other_agent).fingerprint != fingerprint


def test_the_cache_does_not_mix_records_that_differ_in_an_attribute_rules_read(
    default_classifier: Classifier,
) -> None:
    plain = error_record(name="health.x", exception_type="Boom", message="m")
    memory = error_record(
        name="health.x", exception_type="Boom", message="m", attributes={"ers.check": "memory"}
    )
    assert default_classifier.classify(plain).type == "system"
    assert default_classifier.classify(memory).type == "resource"
    assert default_classifier.classify(plain).type == "system"


def rules_document(*rules: dict) -> dict:
    default = {
        "name": "default",
        "severity": "low",
        "type": "system",
        "impact": "none",
        "recoverable": True,
    }
    return {"rules": [*rules, default]}


def rule(**fields: object) -> dict:
    return {
        "name": "r",
        "severity": "high",
        "type": "database",
        "impact": "service_degraded",
        "recoverable": True,
        **fields,
    }


@pytest.mark.parametrize(
    ("bad_rule", "reason"),
    [
        (rule(sevrity="high"), "unknown key(s) ['sevrity']"),
        (rule(severity="urgent"), "severity 'urgent' is not one of"),
        (rule(match={"exception.message": "(unclosed"}), "not a valid regular expression"),
        (rule(match={"span.nam": "agent.*"}), "unknown match key(s) ['span.nam']"),
        (rule(protocol="PANIC"), "protocol 'PANIC' is not one of"),
        (rule(recoverable="yes"), "recoverable must be true or false"),
        (rule(fingerprint="{component}:{colour}"), "unknown placeholder {colour}"),
        (rule(match={"attributes": {"k": {"regex": "["}}}), "not a valid regular expression"),
        ({"name": "r", "severity": "high"}, "missing key(s) ['type', 'impact', 'recoverable']"),
    ],
)
def test_an_invalid_rule_is_reported_with_its_index_and_reason(bad_rule: dict, reason: str) -> None:
    document = rules_document({**rule(name="fine"), "match": {"span.name": "a"}}, bad_rule)
    with pytest.raises(RulesError) as raised:
        Classifier(parse_rules(document))
    message = str(raised.value)
    assert message.startswith("rules[1] (r): ")
    assert reason in message


def test_rules_without_a_catch_all_at_the_end_are_refused() -> None:
    document = {"rules": [rule(match={"span.name": "a"})]}
    with pytest.raises(RulesError, match=r"rules\[0\] \(r\): the last rule must have no 'match'"):
        Classifier(parse_rules(document))


def test_a_catch_all_before_the_end_is_refused() -> None:
    document = rules_document(rule(name="everything"), rule(name="never", match={"span.name": "a"}))
    with pytest.raises(RulesError, match=r"rules\[0\] \(everything\): it has no conditions"):
        Classifier(parse_rules(document))


def test_load_rules_names_the_file_in_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules_document(rule(severity="urgent"))))
    with pytest.raises(RulesError, match=rf"^{path}: rules\[0\] \(r\): severity 'urgent'"):
        load_rules(path)
    with pytest.raises(RulesError, match="cannot read the rules file"):
        load_rules(tmp_path / "missing.yaml")


def test_load_rules_reads_another_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        yaml.safe_dump(
            rules_document(rule(name="orders", match={"resource": {"service.name": "orders"}}))
        )
    )
    classifier = load_rules(path)
    assert classifier.classify(error_record(resource={"service.name": "orders"})).rule == "orders"
    assert classifier.classify(error_record()).rule == "default"


def test_attribute_conditions_exact_list_regex_and_presence() -> None:
    classifier = Classifier(
        parse_rules(
            rules_document(
                rule(name="exact", match={"attributes": {"tier": ["gold", "silver"]}}),
                rule(name="regex", match={"attributes": {"region": {"regex": "^eu-"}}}),
                rule(name="absent", match={"attributes": {"ers.agent": {"present": False}}}),
            )
        )
    )
    assert classifier.classify(error_record(attributes={"tier": "silver"})).rule == "exact"
    assert (
        classifier.classify(error_record(attributes={"region": "eu-west", "ers.agent": "A"})).rule
        == "regex"
    )
    assert classifier.classify(error_record(attributes={})).rule == "absent"
    assert classifier.classify(error_record(attributes={"ers.agent": "A"})).rule == "default"


def test_explain_gives_the_first_failing_condition_of_each_earlier_rule(
    default_classifier: Classifier,
) -> None:
    record = error_record(
        "agent.bma",
        "SimulatedDatabaseError",
        "Database connection timeout",
        attributes={"ers.agent": "BMA"},
    )
    explanation = default_classifier.explain(record)
    assert explanation.classification == default_classifier.classify(record)
    *skipped, matched = explanation.checks
    assert matched.matched and matched.rule == "database"
    assert [check.index for check in explanation.checks] == list(range(len(explanation.checks)))
    assert not any(check.matched for check in skipped)
    assert skipped[0].reason == "span.name 'agent.bma' does not match ['ers.core', 'ers.core.*']"
    assert skipped[1].reason == "attributes['ers.component'] is None, wanted one of ['core']"
    assert "MATCHED" in explanation.lines()[len(skipped)]
    assert explanation.to_dict()["classification"]["rule"] == "database"


def test_replay_summarises_how_new_rules_would_change_classification(
    default_classifier: Classifier,
) -> None:
    stricter = Classifier(
        parse_rules(
            rules_document(
                rule(
                    name="agents-are-critical",
                    severity="critical",
                    type="agent",
                    match={"span.name": "agent.*"},
                )
            )
        )
    )
    records = [
        error_record("agent.npa", "RuntimeError", "Agent processing failure"),
        error_record("agent.npa", "RuntimeError", "Agent processing failure"),
        error_record("worker", "KeyError", "x"),
    ]
    # As the records were stored when they arrived: with the classification they got then.
    stored = [(record, default_classifier.classify(record).to_dict(), 1) for record in records]
    summary = replay_stored(stored, stricter)
    assert summary.total == 3
    assert summary.changed == 3
    assert summary.by_rule_before == {"agent": 2, "default": 1}
    assert summary.by_rule_after == {"agents-are-critical": 2, "default": 1}
    key = "agent (medium/agent/AGENT_FAILURE) → agents-are-critical (critical/agent/None)"
    assert summary.changes[key] == {"count": 2, "example": "agent.npa"}


def test_replay_of_stored_records_weighs_each_by_what_it_stands_for(
    default_classifier: Classifier,
) -> None:
    record = error_record("agent.npa", "RuntimeError", "Agent processing failure")
    stored = [(record, default_classifier.classify(record).to_dict(), 40)]
    summary = replay_stored(stored, default_classifier)
    assert (summary.total, summary.changed, summary.regrouped) == (40, 0, 0)


def test_shipped_rules_file_is_valid_and_ends_with_the_default() -> None:
    classifier = load_rules()
    assert classifier.rules[-1].name == "default"
    assert not classifier.rules[-1].conditions


def test_records_with_nested_attribute_values_are_classified(
    default_classifier: Classifier,
) -> None:
    nested = {"ers.agent": "NPA", "ers.check": {"name": "memory", "limits": [1, 2]}}
    record = error_record("agent.npa", "Boom", "Agent processing failure", attributes=nested)
    assert default_classifier.classify(record).type == "agent"
    assert default_classifier.classify(record).type == "agent"


@pytest.mark.parametrize(
    "cause",
    [
        "i/o timeout",  # matched the timeout-message rule: a medium incident
        "connection refused",
    ],
)
def test_an_unreachable_repository_is_high_whatever_restics_words(
    default_classifier: Classifier, cause: str
) -> None:
    record = error_record(
        "health.backups",
        "service.health.backup_checks.RepositoryUnreachable",
        f"the restic repository 'rest:http://***@backup.db.example:8000/ers' cannot be reached "
        f"({cause}): bring its server back or fix the repository setting; nothing was changed",
        attributes={"ers.component": "backups", "ers.exception.bases": ["ConnectionError"]},
    )
    result = default_classifier.classify(record)
    assert (result.rule, result.severity, result.type) == (
        "backup-repository-unreachable",
        "high",
        "network",
    )


def test_a_password_that_does_not_open_the_repository_is_one_auth_incident_whatever_the_cause(
    default_classifier: Classifier,
) -> None:
    messages = [
        "the password in the restic password file '/srv/ers/pw' does not open the repository",
        "the restic password file '/srv/ers/pw' cannot be read (Is a directory): make it a "
        "file this user may read, or fix the password file setting if it lives elsewhere",
    ]
    results = [
        default_classifier.classify(
            error_record(
                "health.repository",
                "service.health.backup_checks.RepositoryNotOpened",
                message,
                attributes={"ers.component": "backups", "ers.exception.bases": ["OSError"]},
            )
        )
        for message in messages
    ]
    # Before: both "network", as an unreachable server, and two incidents by their words.
    assert {(r.rule, r.severity, r.type) for r in results} == {
        ("backup-repository-password", "high", "auth")
    }
    assert len({r.fingerprint for r in results}) == 1


def test_a_damaged_repository_is_a_high_incident_of_its_own(default_classifier: Classifier) -> None:
    # A RuntimeError matched no rule but the default: a medium "system" incident.
    record = error_record(
        "health.repository",
        "service.health.backup_checks.RepositoryDamaged",
        "restic check found errors in the backup repository: run `ers backup check` for them",
        attributes={"ers.component": "backups", "ers.exception.bases": ["RuntimeError"]},
    )
    result = default_classifier.classify(record)
    assert (result.rule, result.severity, result.protocol) == (
        "backup-repository-damaged",
        "high",
        "LOG_ONLY",
    )


def test_one_outage_of_a_store_is_one_incident_whatever_step_each_failure_met_it_at(
    default_classifier: Classifier,
) -> None:
    """A frozen PostgreSQL server: the budgets store's failures said "no PostgreSQL
    connection within 0.5 s: the last attempt ...", "... within 3 s: the server ..." and
    "no answer within the call's time limit (5 s)", three incidents for one store."""
    messages = [
        "the budgets store is unavailable: no PostgreSQL connection within 0.5 s: the last "
        "attempt to connect to postgresql://ers@db/ers failed (connection timeout expired)",
        "the budgets store is unavailable: no PostgreSQL connection within 3 s: the server "
        "at postgresql://ers@db/ers is unreachable or overloaded",
        "the budgets store is unavailable: no answer within the call's time limit (5 s)",
        # A server restarting, in libpq's words: it was a critical "uncaught" incident.
        "the budgets store is unavailable: cannot use PostgreSQL at postgresql://ers@db/ers "
        "(connection failed: FATAL:  the database system is shutting down)",
    ]
    found = {
        default_classifier.classify(
            error_record(
                exception_type="service.errors.StoreUnavailable",
                message=message,
                attributes={"ers.component": "budgets"},
            )
        )
        for message in messages
    }
    assert {(c.rule, c.fingerprint) for c in found} == {
        ("store-unavailable", "budgets:database:StoreUnavailable")
    }, found
    profiles = error_record(
        exception_type="service.errors.StoreUnavailable",
        message=messages[0].replace("budgets", "profiles"),
        attributes={"ers.component": "profiles"},
    )
    assert default_classifier.classify(profiles).fingerprint == (
        "profiles:database:StoreUnavailable"
    )
    # A store found damaged is a cause of its own, not the outage's.
    damaged = error_record(
        exception_type="service.errors.StoreDamaged",
        message="the budgets store is damaged (database disk image is malformed)",
        attributes={"ers.component": "budgets"},
    )
    assert default_classifier.classify(damaged).rule != "store-unavailable"
