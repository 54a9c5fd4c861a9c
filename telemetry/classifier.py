"""Classification of error spans by rules: first match wins, the last rule matches everything.

Rules live in YAML (the defaults in ``telemetry/rules.yaml``; ``load_rules(path)`` reads
another file). Conditions of one rule must all hold:

- ``span.name``: a glob or a list of globs (``agent.*``);
- ``exception.type``: a class name or a list; it also matches any name in the span attribute
  ``ers.exception.bases`` (the base classes of an in-process exception);
- ``exception.message``: a regular expression, searched, case-insensitive;
- ``attributes`` / ``resource``: ``{key: value}``, where a value is exact, a list of exact
  values, ``{regex: ...}`` or ``{present: true|false}``.

A rule yields severity, type, impact, recoverable, protocol and a fingerprint template.

What the service sets on a span so that the default rules can read it: status ERROR and an
``exception`` event (``span.record_exception``); ``ers.exception.bases`` (the exception's base
class names, most specific first); ``ers.agent`` on agent spans and ``ers.component``
elsewhere (the incident's component); ``ers.check`` on health-check spans. Without an
exception event, ``error.type`` and a status message "Type: message" are used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from telemetry.fingerprint import component_of
from telemetry.rule_conditions import Rule, RulesError, parse_rules
from telemetry.span_record import SpanRecord

DEFAULT_RULES_PATH = Path(__file__).with_name("rules.yaml")
CACHE_LIMIT = 4096
# Set on a span whose error status is no failure of its own (a 503 while the backup
# repository is still being reached, a remote agent's attempt under the agent span that is
# the incident); its value says why. The incident processor leaves such spans out.
NOT_AN_INCIDENT = "ers.not_an_incident"

__all__ = [
    "DEFAULT_RULES_PATH",
    "NOT_AN_INCIDENT",
    "Classification",
    "Classifier",
    "Explanation",
    "ReplaySummary",
    "RuleCheck",
    "RulesError",
    "load_rules",
    "replay_stored",
]


@dataclass(frozen=True, slots=True)
class Classification:
    severity: str  # low | medium | high | critical
    type: str  # database, network, timeout, agent, validation, resource, system, dependency…
    impact: str  # service_degraded, feature_unavailable, system_down, none…
    recoverable: bool
    protocol: str | None  # AGENT_FAILURE … LOG_ONLY, or None
    rule: str
    component: str
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RuleCheck:
    index: int
    rule: str
    matched: bool
    reason: str  # the first condition that failed, or what matched

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Explanation:
    classification: Classification
    checks: list[RuleCheck]  # every rule up to and including the one that matched
    # Why the span is no incident whatever the rules say (its NOT_AN_INCIDENT), else None.
    not_an_incident: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "classification": self.classification.to_dict(),
            "checks": [check.to_dict() for check in self.checks],
            "notAnIncident": self.not_an_incident,
        }

    def lines(self) -> list[str]:
        lines = [
            f"rules[{check.index}] {check.rule}: "
            + ("MATCHED" if check.matched else "no")
            + f" — {check.reason}"
            for check in self.checks
        ]
        c = self.classification
        lines.append(
            f"→ {c.severity} {c.type}, impact {c.impact}, "
            f"{'recoverable' if c.recoverable else 'not recoverable'}, "
            f"{f'protocol {c.protocol}' if c.protocol else 'no response protocol'}, "
            f"component {c.component}, fingerprint {c.fingerprint}"
        )
        if self.not_an_incident:
            lines.append(
                f"but no incident: the span says its failure is not its own "
                f"({NOT_AN_INCIDENT}: {self.not_an_incident}), so ERS counts it nowhere"
            )
        return lines


def yaml_error_where(exc: yaml.MarkedYAMLError) -> str:
    """Where the parser stopped and why, in one line, without the line's text (it may hold
    a secret)."""
    mark = exc.problem_mark or exc.context_mark
    at = "" if mark is None else f"at line {mark.line + 1}, column {mark.column + 1}"
    why = exc.problem or exc.__class__.__name__
    if exc.context and exc.context_mark is not None and exc.context_mark is not mark:
        why += f", {exc.context} that starts at line {exc.context_mark.line + 1}"
    return f"{at} ({why}); check the indentation, quotes and brackets there"


def load_rules(path: str | Path | None = None) -> Classifier:
    """Read and check a rules file; an invalid file raises ``RulesError`` naming the rule."""
    rules_path = Path(path) if path is not None else DEFAULT_RULES_PATH
    try:
        document = yaml.safe_load(rules_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise RulesError(f"{rules_path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise RulesError(f"cannot read the rules file {rules_path}: {exc.strerror}") from exc
    except yaml.MarkedYAMLError as exc:
        raise RulesError(f"{rules_path} is not valid YAML {yaml_error_where(exc)}") from None
    except (yaml.YAMLError, RecursionError) as exc:  # RecursionError: an anchor inside itself
        raise RulesError(f"{rules_path} is not valid YAML ({exc.__class__.__name__})") from None
    try:
        return Classifier(parse_rules(document), source=str(rules_path))
    except RulesError as exc:
        raise RulesError(f"{rules_path}: {exc}") from exc


class Classifier:
    """Thread-safe: the cache is a plain dict whose worst race is a recomputed entry."""

    def __init__(self, rules: list[Rule], source: str = "<rules>") -> None:
        if not rules or rules[-1].conditions:
            raise RulesError("the last rule must have no conditions so every error is classified")
        self.rules = rules
        self.source = source
        self._cache: dict[tuple[Any, ...], Classification] = {}
        self._key_attributes, self._key_resource, self._key_message = _key_fields(rules)

    def classify(self, record: SpanRecord) -> Classification:
        try:
            key = self._cache_key(record)
            found = self._cache.get(key)
        except TypeError:  # an unhashable attribute value (a list): build a hashable key
            key = self._cache_key(record, hashable=True)
            found = self._cache.get(key)
        if found is None:
            found = self._classify_uncached(record)
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = found
        return found

    def explain(self, record: SpanRecord) -> Explanation:
        checks: list[RuleCheck] = []
        for rule in self.rules:
            failure = rule.first_failure(record)
            if failure is None:
                checks.append(RuleCheck(rule.index, rule.name, True, rule.describe_match()))
                skipped = record.attributes.get(NOT_AN_INCIDENT)
                return Explanation(
                    self._build(rule, record), checks, str(skipped) if skipped else None
                )
            checks.append(RuleCheck(rule.index, rule.name, False, failure))
        raise AssertionError("the last rule matches every record")  # guarded in __init__

    def _classify_uncached(self, record: SpanRecord) -> Classification:
        for rule in self.rules:
            if rule.matches(record):
                return self._build(rule, record)
        raise AssertionError("the last rule matches every record")

    @staticmethod
    def _build(rule: Rule, record: SpanRecord) -> Classification:
        component = component_of(record)
        fingerprint = rule.fingerprint.render(
            record, {"component": component, "type": rule.type, "severity": rule.severity}
        )
        return Classification(
            severity=rule.severity,
            type=rule.type,
            impact=rule.impact,
            recoverable=rule.recoverable,
            protocol=rule.protocol,
            rule=rule.name,
            component=component,
            fingerprint=fingerprint,
        )

    def _cache_key(self, record: SpanRecord, hashable: bool = False) -> tuple[Any, ...]:
        """Everything a rule or a fingerprint of this rule set reads, and nothing else, so
        a storm of one failure hits the cache on every span."""
        attributes = map(record.attributes.get, self._key_attributes)
        resource = map(record.resource.get, self._key_resource)
        if hashable:
            attributes, resource = map(_hashable, attributes), map(_hashable, resource)
        return (
            record.name,
            record.exception_type,
            record.service_name,
            record.exception_message if self._key_message else None,
            record.exception_bases,
            *attributes,
            None,  # separates the attribute values from the resource values
            *resource,
        )


def _key_fields(rules: list[Rule]) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    attributes = {"ers.agent", "ers.component"}
    resource: set[str] = set()
    uses_message = False
    for rule in rules:
        attributes.update(rule.attribute_keys)
        resource.update(rule.resource_keys)
        uses_message = uses_message or rule.uses_message
    return tuple(sorted(attributes)), tuple(sorted(resource)), uses_message


def _hashable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, dict):  # an OTLP kvlist attribute
        return tuple(sorted((key, _hashable(item)) for key, item in value.items()))
    return value


@dataclass
class ReplaySummary:
    """How classification would change over a set of records: old rules against new."""

    total: int = 0
    changed: int = 0
    regrouped: int = 0  # records whose fingerprint (hence incident) would change
    by_rule_before: dict[str, int] = field(default_factory=dict)
    by_rule_after: dict[str, int] = field(default_factory=dict)
    # "old rule (severity/type/protocol) → new rule (…)" → count and one example span name
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """In the API's and the other commands' JSON spelling."""
        return {
            "total": self.total,
            "changed": self.changed,
            "regrouped": self.regrouped,
            "byRuleBefore": self.by_rule_before,
            "byRuleAfter": self.by_rule_after,
            "changes": self.changes,
        }


def replay_stored(
    stored: Iterable[tuple[SpanRecord, Mapping[str, Any], int]],
    new: Classifier,
) -> ReplaySummary:
    """``stored``: records with the classification they were given when they arrived and
    how many failures each stands for (``IncidentStore.stored_span_records``)."""
    summary = ReplaySummary()
    by_rule_before, by_rule_after, changes = (
        summary.by_rule_before,
        summary.by_rule_after,
        summary.changes,
    )
    for record, before, weight in stored:
        after = new.classify(record).to_dict()
        summary.total += weight
        old_rule, new_rule = str(before.get("rule")), after["rule"]
        by_rule_before[old_rule] = by_rule_before.get(old_rule, 0) + weight
        by_rule_after[new_rule] = by_rule_after.get(new_rule, 0) + weight
        if before.get("fingerprint") != after["fingerprint"]:
            summary.regrouped += weight
        old_label, new_label = _label(before), _label(after)
        if old_label != new_label:
            summary.changed += weight
            change = changes.setdefault(
                f"{old_label} → {new_label}", {"count": 0, "example": record.name}
            )
            change["count"] += weight
    return summary


def _label(fields: Mapping[str, Any]) -> str:
    return (
        f"{fields.get('rule')} ({fields.get('severity')}/{fields.get('type')}/"
        f"{fields.get('protocol')})"
    )
