"""Classification rules as checked values: parsing a rules document and matching one rule.

Every mistake in a rules document is reported as ``RulesError`` with the rule's index and
name, so a bad file stops start-up with a message that says where to look.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Protocol

from telemetry.fingerprint import DEFAULT_TEMPLATE, FingerprintTemplate, TemplateError, short_type
from telemetry.span_record import SpanRecord

SEVERITIES = ("low", "medium", "high", "critical")
PROTOCOLS = (
    "AGENT_FAILURE",
    "SERVICE_DEGRADATION",
    "CRITICAL_SYSTEM_FAILURE",
    "RESOURCE_EXHAUSTION",
    "LOG_ONLY",
)
RULE_KEYS = {
    "name",
    "description",
    "match",
    "severity",
    "type",
    "impact",
    "recoverable",
    "protocol",
    "fingerprint",
}
REQUIRED_KEYS = ("name", "severity", "type", "impact", "recoverable")
MATCH_KEYS = {"span.name", "exception.type", "exception.message", "attributes", "resource"}
DOCUMENT_KEYS = {"rules", "fingerprint"}
WORD = re.compile(r"^[a-z][a-z0-9_]*$")


class RulesError(ValueError):
    """The rules document is invalid; the message names the rule and what to change."""


class Condition(Protocol):
    def failure(self, record: SpanRecord) -> str | None:
        """None when the condition holds, else why it does not."""


@dataclass(frozen=True)
class SpanNameIs:
    globs: tuple[str, ...]
    pattern: re.Pattern[str]

    def failure(self, record: SpanRecord) -> str | None:
        if self.pattern.match(record.name):
            return None
        return f"span.name {record.name!r} does not match {list(self.globs)}"


@dataclass(frozen=True)
class ExceptionTypeIs:
    names: frozenset[str]

    def failure(self, record: SpanRecord) -> str | None:
        names = self.names
        if record.exception_type in names or short_type(record.exception_type) in names:
            return None
        if any(base in names for base in record.exception_bases):
            return None
        bases = f" (bases {list(record.exception_bases)})" if record.exception_bases else ""
        shown = record.exception_type or "none"
        return f"exception.type {shown}{bases} is not one of {sorted(names)}"


@dataclass(frozen=True)
class MessageMatches:
    pattern: re.Pattern[str]

    def failure(self, record: SpanRecord) -> str | None:
        if self.pattern.search(record.exception_message):
            return None
        shown = record.exception_message
        return f"exception.message {shown!r} does not match /{self.pattern.pattern}/"


@dataclass(frozen=True)
class AttributeIs:
    source: str  # "attributes" or "resource"
    key: str
    values: tuple[Any, ...] = ()
    pattern: re.Pattern[str] | None = None
    present: bool | None = None

    def failure(self, record: SpanRecord) -> str | None:
        found = (record.attributes if self.source == "attributes" else record.resource).get(
            self.key
        )
        candidates = found if isinstance(found, list | tuple) else [found]
        if self.present is not None:
            ok = (found is not None) == self.present
            wanted = "present" if self.present else "absent"
        elif self.pattern is not None:
            ok = any(c is not None and self.pattern.search(str(c)) for c in candidates)
            wanted = f"matching /{self.pattern.pattern}/"
        else:
            ok = any(c in self.values for c in candidates)
            wanted = f"one of {list(self.values)}"
        if ok:
            return None
        return f"{self.source}[{self.key!r}] is {found!r}, wanted {wanted}"


@dataclass(frozen=True)
class Rule:
    index: int
    name: str
    conditions: tuple[Condition, ...]
    severity: str
    type: str
    impact: str
    recoverable: bool
    protocol: str | None
    fingerprint: FingerprintTemplate

    def matches(self, record: SpanRecord) -> bool:
        return all(condition.failure(record) is None for condition in self.conditions)

    def first_failure(self, record: SpanRecord) -> str | None:
        for condition in self.conditions:
            reason = condition.failure(record)
            if reason is not None:
                return reason
        return None

    def describe_match(self) -> str:
        return f"all {len(self.conditions)} conditions hold" if self.conditions else "default"

    @property
    def attribute_keys(self) -> set[str]:
        return self._keys("attributes")

    @property
    def resource_keys(self) -> set[str]:
        return self._keys("resource")

    @property
    def uses_message(self) -> bool:
        return "message" in self.fingerprint.placeholders or any(
            isinstance(c, MessageMatches) for c in self.conditions
        )

    def _keys(self, source: str) -> set[str]:
        """Attribute keys this rule reads from ``source``, in conditions or its template."""
        prefix = f"{source}."
        read = {c.key for c in self.conditions if isinstance(c, AttributeIs) and c.source == source}
        templated = {
            n[len(prefix) :] for n in self.fingerprint.placeholders if n.startswith(prefix)
        }
        return read | templated


def parse_rules(document: Any) -> list[Rule]:
    if not isinstance(document, dict) or "rules" not in document:
        raise RulesError("the rules document must be a mapping with a 'rules' list")
    unknown = set(document) - DOCUMENT_KEYS
    if unknown:
        raise RulesError(f"unknown top-level key(s) {sorted(unknown)}; allowed: rules, fingerprint")
    raw_rules = document["rules"]
    if not isinstance(raw_rules, list) or not raw_rules:
        raise RulesError("'rules' must be a non-empty list")
    default_template = str(document.get("fingerprint", DEFAULT_TEMPLATE))
    rules = [_parse_rule(index, raw, default_template) for index, raw in enumerate(raw_rules)]
    names = [rule.name for rule in rules]
    for rule in rules:
        if names.count(rule.name) > 1:
            raise RulesError(f"rules[{rule.index}] ({rule.name}): the name is used twice")
        if not rule.conditions and rule is not rules[-1]:
            raise RulesError(
                f"rules[{rule.index}] ({rule.name}): it has no conditions, so it matches "
                "everything and the rules after it can never match; move it to the end"
            )
    if rules[-1].conditions:
        last = rules[-1]
        raise RulesError(
            f"rules[{last.index}] ({last.name}): the last rule must have no 'match' so that "
            "every error is classified; add a default rule at the end"
        )
    return rules


def _parse_rule(index: int, raw: Any, default_template: str) -> Rule:
    label = f"rules[{index}]"
    if not isinstance(raw, dict):
        raise RulesError(f"{label}: a rule must be a mapping, got {type(raw).__name__}")
    if isinstance(raw.get("name"), str):
        label = f"{label} ({raw['name']})"

    def fail(reason: str) -> RulesError:
        return RulesError(f"{label}: {reason}")

    unknown = set(raw) - RULE_KEYS
    if unknown:
        raise fail(f"unknown key(s) {sorted(unknown)}; allowed: {sorted(RULE_KEYS)}")
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise fail(f"missing key(s) {missing}")
    if raw["severity"] not in SEVERITIES:
        raise fail(f"severity {raw['severity']!r} is not one of {list(SEVERITIES)}")
    for key in ("name", "type", "impact"):
        if not isinstance(raw[key], str) or not WORD.match(raw[key].replace("-", "_")):
            raise fail(f"{key} must be a lowercase word (letters, digits, _ or -)")
    if not isinstance(raw["recoverable"], bool):
        raise fail("recoverable must be true or false")
    protocol = raw.get("protocol")
    if protocol is not None and protocol not in PROTOCOLS:
        raise fail(f"protocol {protocol!r} is not one of {list(PROTOCOLS)} or null")
    try:
        template = FingerprintTemplate.parse(str(raw.get("fingerprint", default_template)))
        conditions = _parse_match(raw.get("match") or {})
    except (TemplateError, ValueError) as exc:
        raise fail(str(exc)) from exc
    return Rule(
        index=index,
        name=raw["name"],
        conditions=conditions,
        severity=raw["severity"],
        type=raw["type"],
        impact=raw["impact"],
        recoverable=raw["recoverable"],
        protocol=protocol,
        fingerprint=template,
    )


def _parse_match(match: Any) -> tuple[Condition, ...]:
    if not isinstance(match, dict):
        raise ValueError("match must be a mapping")
    unknown = set(match) - MATCH_KEYS
    if unknown:
        raise ValueError(f"unknown match key(s) {sorted(unknown)}; allowed: {sorted(MATCH_KEYS)}")
    conditions: list[Condition] = []
    if "span.name" in match:
        globs = _strings(match["span.name"], "span.name")
        joined = "|".join(f"(?:{fnmatch.translate(glob)})" for glob in globs)
        conditions.append(SpanNameIs(globs, re.compile(joined)))
    if "exception.type" in match:
        conditions.append(
            ExceptionTypeIs(frozenset(_strings(match["exception.type"], "exception.type")))
        )
    if "exception.message" in match:
        conditions.append(MessageMatches(_regex(match["exception.message"], "exception.message")))
    for source in ("attributes", "resource"):
        for key, expected in (match.get(source) or {}).items():
            conditions.append(_attribute_condition(source, str(key), expected))
    return tuple(conditions)


def _attribute_condition(source: str, key: str, expected: Any) -> AttributeIs:
    where = f"{source}[{key!r}]"
    if isinstance(expected, dict):
        if set(expected) == {"regex"}:
            return AttributeIs(source, key, pattern=_regex(expected["regex"], where, 0))
        if set(expected) == {"present"} and isinstance(expected["present"], bool):
            return AttributeIs(source, key, present=expected["present"])
        raise ValueError(f"{where} must be a value, a list, {{regex: ...}} or {{present: bool}}")
    values = tuple(expected) if isinstance(expected, list) else (expected,)
    return AttributeIs(source, key, values=values)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, str) and item for item in items):
        raise ValueError(f"{where} must be a non-empty string or a list of them")
    return tuple(items)


def _regex(value: Any, where: str, flags: int = re.IGNORECASE) -> re.Pattern[str]:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a regular expression string")
    try:
        return re.compile(value, flags)
    except re.error as exc:
        raise ValueError(f"{where} is not a valid regular expression ({exc}): {value!r}") from exc
