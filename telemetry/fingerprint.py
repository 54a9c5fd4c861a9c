"""Fingerprints: which failures are "the same problem" and belong to one incident.

As in Sentry, a fingerprint is built from a template over the failure's fields, and the
message is normalised first so that "timeout after 5023 ms for user 8f3a…" and "timeout after
4100 ms for user 1c2d…" group together. Placeholders:

- ``{component}``: span attribute ``ers.agent``, else ``ers.component``, else the resource's
  ``service.name``;
- ``{type}``, ``{severity}``: from the classification;
- ``{exception.type}``: the exception's class name without its module;
- ``{message}``: the normalised exception message;
- ``{span.name}``, ``{service.name}``;
- ``{attributes.KEY}``, ``{resource.KEY}``: any span or resource attribute.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from telemetry.span_record import NAME_LIMIT, SpanRecord

DEFAULT_TEMPLATE = "{component}:{type}:{exception.type}:{message}"
MESSAGE_LIMIT = 160

COMPONENT_ATTRIBUTES = ("ers.agent", "ers.component")
FIXED_PLACEHOLDERS = frozenset(
    {"component", "type", "severity", "exception.type", "message", "span.name", "service.name"}
)
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")

# Order matters: whole structured tokens first, then what is left of bare numbers.
_NORMALISERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"'[^']*'|\"[^\"]*\"|`[^`]*`"), "<str>"),
    (re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), "<email>"),
    (
        re.compile(
            r"\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\b"
        ),
        "<uuid>",
    ),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<ip>"),
    (
        re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?"),
        "<ts>",
    ),
    # A number in scientific notation, as floats are written (1.2e3, 1.5E-07, 1e+16): left to
    # the passes below, its mantissa's digits and exponent made a <hex> or an <id>. A bare
    # 4821e93 stays a short hex id (a git commit's).
    (re.compile(r"[-+]?\b\d+(?:\.\d+[eE][-+]?|[eE][-+])\d+"), "<num>"),
    # A hex id of a span id's 16 characters with no letter in it (one in two thousand) is
    # still a hex id: as a <num>, it opened an incident apart from the others'. Those of a
    # trace id's 32 are <uuid> above, with or without a letter.
    (
        re.compile(
            r"\b0x[0-9a-fA-F]+\b|\b(?=[0-9a-fA-F]*\d)(?:(?=\d*[a-fA-F])[0-9a-fA-F]{8,}|\d{16})\b"
        ),
        "<hex>",
    ),
    # Short hex ids (a git commit's 7 characters, 5f3a9c), each its own incident otherwise;
    # digits with one letter after them are a number with its unit (123456b).
    (
        re.compile(r"\b(?=[0-9a-fA-F]*\d)(?=\d*[a-fA-F])(?!\d+[a-fA-F]\b)[0-9a-fA-F]{6,7}\b"),
        "<hex>",
    ),
    # A prefixed random id may hold no digit (cus_NffrFeUfNVxHib's 14 characters go without
    # one about once in twelve): capitals a letter or two apart tell it from snake_case and
    # camelCase words (db_primaryReplica).
    (
        re.compile(
            r"\b[a-z]{2,}_(?=[A-Za-z\d]*[A-Z][a-z\d]?[A-Z])(?=[A-Z\d]*[a-z])[A-Za-z\d]{10,}\b"
        ),
        "<id>",
    ),
    # Identifiers mixing letters and digits (req_8f3a91, user-42x7, INC_1700_ab12cd).
    (re.compile(r"\b(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[A-Za-z0-9]+(?:[_-][A-Za-z0-9]+)+\b"), "<id>"),
    (re.compile(r"\b(?=[A-Za-z]*\d)(?=\d*[A-Za-z])[A-Za-z0-9]{8,}\b"), "<id>"),
    # A unit may follow (30s, 1200ms), a letter may not lead (utf8, http2, sha256); a class
    # of HTTP statuses (4xx, 5xx) is kept, so client and server errors stay apart.
    (re.compile(r"[-+]?\b\d+(?:\.\d+)?(?!\d|[xX]{2}\b)"), "<num>"),
    (re.compile(r"\s+"), " "),
)


class TemplateError(ValueError):
    """A fingerprint template names a placeholder that does not exist."""


def normalise_message(message: str) -> str:
    """The message with its variable parts (numbers, ids, hex, uuids, quoted strings, ips,
    e-mails, timestamps) replaced by placeholders, trimmed to a fixed length."""
    for pattern, replacement in _NORMALISERS:
        message = pattern.sub(replacement, message)
    return message.strip()[:MESSAGE_LIMIT]


def short_type(exception_type: str) -> str:
    """``service.resilience.faults.SimulatedDatabaseError`` → ``SimulatedDatabaseError``;
    Java-style ``Outer.Inner`` names keep only their last part too."""
    return exception_type.rsplit(".", 1)[-1]


def component_of(record: SpanRecord) -> str:
    for key in COMPONENT_ATTRIBUTES:
        value = record.attributes.get(key)
        if value:
            return str(value)[:NAME_LIMIT]
    return record.service_name


@dataclass(frozen=True)
class FingerprintTemplate:
    """A template checked once when the rules load, rendered per failure."""

    text: str
    _parts: tuple[tuple[str, str | None], ...]  # (literal text, placeholder or None)

    @classmethod
    def parse(cls, text: str) -> FingerprintTemplate:
        parts: list[tuple[str, str | None]] = []
        position = 0
        for match in PLACEHOLDER.finditer(text):
            name = match.group(1)
            if name not in FIXED_PLACEHOLDERS and not name.startswith(("attributes.", "resource.")):
                known = ", ".join(sorted(FIXED_PLACEHOLDERS))
                raise TemplateError(
                    f"unknown placeholder {{{name}}} in fingerprint {text!r}; use one of "
                    f"{known}, attributes.KEY or resource.KEY"
                )
            parts.append((text[position : match.start()], name))
            position = match.end()
        parts.append((text[position:], None))
        # A brace left over is a placeholder mistyped ("{message"): taken as text, it would
        # give every failure the rule classifies one fingerprint, and so one incident.
        if any("{" in literal or "}" in literal for literal, _ in parts):
            raise TemplateError(
                f"fingerprint {text!r} has a {{ or }} that opens or closes no placeholder; "
                "write each placeholder as {name}, such as {message}"
            )
        return cls(text, tuple(parts))

    @property
    def placeholders(self) -> tuple[str, ...]:
        return tuple(name for _, name in self._parts if name is not None)

    def render(self, record: SpanRecord, values: dict[str, str]) -> str:
        """``values`` holds component, type and severity; the rest comes from the record."""
        pieces: list[str] = []
        for literal, name in self._parts:
            pieces.append(literal)
            if name is not None:
                pieces.append(_value(name, record, values))
        return "".join(pieces)


def _value(name: str, record: SpanRecord, values: dict[str, str]) -> str:
    if name in values:
        return values[name]
    getter = _GETTERS.get(name)
    if getter is not None:
        return getter(record)
    source, _, key = name.partition(".")
    found = (record.attributes if source == "attributes" else record.resource).get(key, "")
    return str(found)[:NAME_LIMIT]


_GETTERS: dict[str, Callable[[SpanRecord], str]] = {
    "exception.type": lambda record: short_type(record.exception_type),
    # A failure without words (an HTTP server span with error.type 500 alone) is told apart
    # by its span's name, the route: GET /cart and POST /pay are two failures.
    "message": lambda record: (
        normalise_message(record.exception_message) or f"<span {normalise_message(record.name)}>"
    ),
    "span.name": lambda record: record.name,
    "service.name": lambda record: record.service_name,
}
