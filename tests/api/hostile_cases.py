"""Hostile inputs for every endpoint, each with the one status ERS must answer.

A row names the route as the OpenAPI document spells it (``METHOD /path/{param}``) so that
a test can prove every documented operation has at least one row. Bodies are bytes: JSON
that Python's encoder would refuse to write (``NaN``, ``1e309``, duplicate keys, lone
surrogates, invalid UTF-8) is exactly what a hostile client sends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

JSON = "application/json"
MAX_BODY_BYTES = 1_048_576  # the settings' default max_body_bytes


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    method: str
    route: str
    url: str
    status: int
    body: bytes | None = None
    content_type: str | None = JSON
    detail: str | None = None
    # Sent without a content-length, so only the streaming side of the body limit can stop it.
    chunked: bool = False

    @property
    def operation(self) -> str:
        return f"{self.method} {self.route}"


def encode(value: Any) -> bytes:
    """JSON as a client writes it; ``ensure_ascii`` turns a lone surrogate into ``\\ud800``."""
    return json.dumps(value, ensure_ascii=True).encode()


def splice(template: dict[str, Any], field: str, raw: str) -> bytes:
    """``template`` as JSON with ``field`` set to a raw JSON token such as ``NaN``."""
    marker = "__RAW__"
    return encode({**template, field: marker}).replace(f'"{marker}"'.encode(), raw.encode())


# Strings that have broken real services: option injection, traversal, control bytes,
# length, unicode that renders differently than it compares, SQL.
STRINGS: dict[str, str] = {
    "dashdash-option": "--password-file=x",
    "dotdot-traversal": "../etc/passwd",
    "encoded-traversal": "%2e%2e%2f",
    "path-separator": "a/b",
    "nul-byte": "a\x00b",
    "control-chars": "a\x1b[31m\r\nb\x7f",
    "10k-chars": "a" * 10_000,
    "rtl-override": "abc\u202etxt.exe",
    "zero-width-joiner": "a\u200db",
    "emoji": "\U0001f525\U0001f468\u200d\U0001f4bb",
    "lone-surrogate": "\ud800",
    "combining-chars": "e\u0301\u0301\u0301",
    "fullwidth-digits": "\uff11\uff12\uff13",
    "sql-injection": "' OR 1=1 --",
    "unknown-upper": "NOPE",
    "alias-with-space": "mca ",
}

# How each of STRINGS reaches a path segment. Traversal and separators go raw because that
# is how an attacker writes them; a lone surrogate has no UTF-8 form, so it is sent as the
# bytes a careless encoder would produce for it.
RAW_SEGMENTS: dict[str, str] = {
    "dotdot-traversal": "../etc/passwd",
    "encoded-traversal": "%2e%2e%2f",
    "path-separator": "a/b",
    "lone-surrogate": "%ED%A0%80",
}


def segment(name: str) -> str:
    return RAW_SEGMENTS.get(name, quote(STRINGS[name], safe=""))


# Numbers JSON forbids or that overflow every field: raw tokens, spliced into bodies.
NUMBERS: dict[str, str] = {
    "negative": "-1",
    "zero": "0",
    "nan": "NaN",
    "infinity": "Infinity",
    "minus-infinity": "-Infinity",
    "1e309": "1e309",
    "10e30-integer": str(10**30),
    "boolean-true": "true",
    "numeric-string": '"5"',
}

DEEP_ARRAY = b"[" * 10_000 + b"]" * 10_000
DEEP_OBJECT = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
TWO_MEGABYTES = encode({"message": "a" * 2 * MAX_BODY_BYTES})
INVALID_UTF8 = b'{"message": "\xff\xfe\xc3\x28 plan my meals"}'


def body_cases(prefix: str, method: str, route: str, url: str, valid: dict[str, Any]) -> list[Case]:
    """Shape attacks on a JSON body: size, depth, top-level type, encoding, content type."""
    rows = [
        Case(f"{prefix}-2mb-body", method, route, url, 413, TWO_MEGABYTES, detail="at most"),
        Case(
            f"{prefix}-2mb-body-chunked",
            method,
            route,
            url,
            413,
            TWO_MEGABYTES,
            detail="at most",
            chunked=True,
        ),
        Case(f"{prefix}-depth-10000-array", method, route, url, 400, DEEP_ARRAY),
        Case(f"{prefix}-depth-10000-object", method, route, url, 400, DEEP_OBJECT),
        Case(f"{prefix}-top-level-list", method, route, url, 422, encode([valid])),
        Case(f"{prefix}-top-level-string", method, route, url, 422, encode("plan my meals")),
        Case(f"{prefix}-top-level-number", method, route, url, 422, b"42"),
        Case(f"{prefix}-top-level-100k-list", method, route, url, 422, encode([0] * 100_000)),
        Case(f"{prefix}-truncated-json", method, route, url, 422, b'{"message": "pl', None),
        Case(f"{prefix}-invalid-utf8", method, route, url, 400, INVALID_UTF8),
        Case(
            f"{prefix}-wrong-content-type",
            method,
            route,
            url,
            422,
            encode(valid),
            "text/plain",
            detail="JSON object",
        ),
        Case(
            f"{prefix}-form-content-type",
            method,
            route,
            url,
            422,
            b"message=plan+my+meals",
            "application/x-www-form-urlencoded",
            detail="JSON object",
        ),
        Case(
            f"{prefix}-unknown-field",
            method,
            route,
            url,
            422,
            encode({**valid, "__proto__": {"admin": True}}),
            detail="__proto__",
        ),
    ]
    for row in rows:
        if row.content_type == JSON and row.body is not None and b"message=" not in row.body:
            continue
    return rows


def _fix(rows: list[Case]) -> list[Case]:
    return rows
