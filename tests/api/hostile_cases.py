"""Hostile inputs for every endpoint, each with the one status ERS must answer.

A row names its operation as the OpenAPI document spells it (``METHOD /path/{param}``), so a
test can prove that every documented operation has rows. Bodies are bytes: the JSON that
Python's encoder refuses to write (``NaN``, ``1e309``, a key given twice, invalid UTF-8) is
exactly what a hostile client sends.

With backups turned off (the test settings), the backup routes answer 503 from a dependency
that runs before the body is validated; only bodies over the size limit (413) and bodies that
cannot be decoded (422: a JSON syntax error, nesting too deep to read, bytes that are not
UTF-8, a key given twice in one object) are refused earlier.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

JSON = "application/json"
MAX_BODY_BYTES = 1_048_576  # the settings' default max_body_bytes
MAX_MESSAGE_CHARS = 4000  # the settings' default max_message_chars


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
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def operation(self) -> str:
        return f"{self.method} {self.route}"


def with_status(case: Case, status: int) -> Case:
    """``case`` answered otherwise, with no detail to look for."""
    return replace(case, status=status, detail=None)


def encode(value: Any) -> bytes:
    """JSON as a client writes it; ``ensure_ascii`` turns a lone surrogate into ``\\ud800``."""
    return json.dumps(value, ensure_ascii=True).encode()


TOKEN = "__TOKEN__"


def with_token(body: bytes, token: str) -> bytes:
    """``body`` with the string ``TOKEN`` replaced by a raw JSON token such as ``NaN``."""
    return body.replace(f'"{TOKEN}"'.encode(), token.encode())


def splice(template: dict[str, Any], field: str, token: str) -> bytes:
    """``template`` as JSON with ``field`` set to a raw JSON token."""
    return with_token(encode({**template, field: TOKEN}), token)


# Strings that have broken real services: option injection, traversal, control bytes,
# length, unicode that renders differently from how it compares, SQL, unknown names.
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
    "unknown-name": "NOPE",
    "alias-with-space": "mca ",
}

# How each of STRINGS reaches a path segment or a query value. Traversal and separators go
# raw, as an attacker writes them; a lone surrogate has no UTF-8 form, so it goes as the
# bytes a careless encoder produces for it.
RAW_IN_URL: dict[str, str] = {
    "dotdot-traversal": "../etc/passwd",
    "encoded-traversal": "%2e%2e%2f",
    "path-separator": "a/b",
    "lone-surrogate": "%ED%A0%80",
}


def free_text_outcome(
    name: str, field: str, max_chars: int, ok: int = 200
) -> tuple[int, str | None]:
    """Free text takes any of STRINGS but one over its length, a lone surrogate, which has
    no UTF-8 form and so could be neither stored nor logged, and a NUL, which PostgreSQL
    cannot store as text."""
    if name == "lone-surrogate":  # in words, not "unable to parse raw data as a unicode string"
        return 422, f"{field}: must be Unicode text; it holds a lone surrogate"
    if name == "nul-byte" or len(STRINGS[name]) > max_chars:
        return 422, field
    return ok, None


def reason_outcome(name: str, field: str, max_chars: int, ok: int = 200) -> tuple[int, str | None]:
    """A reason is free text on one line: it also refuses a control character and a
    bidirectional override, which break or reorder the table row that shows it."""
    if name == "control-chars":
        return 422, "control character"
    if name == "rtl-override":
        return 422, "bidirectional formatting character"
    return free_text_outcome(name, field, max_chars, ok)


def in_url(name: str) -> str:
    if name in RAW_IN_URL:
        return RAW_IN_URL[name]
    return quote(STRINGS[name], safe="")


# Numbers JSON forbids, or that overflow every field: raw tokens, spliced into bodies.
NUMBERS: dict[str, str] = {
    "negative": "-1",
    "zero": "0",
    "nan": "NaN",
    "infinity": "Infinity",
    "minus-infinity": "-Infinity",
    "1e309": "1e309",
    "10e30-integer": str(10**30),
    "boolean": "true",
}

# Values that only look like the type a field wants. Lax coercion would take "yes", 1 and
# "true" as true and "30" as 30; where such a field steers an action (confirm, force, a count,
# a time to live, a weight), a client that sends them has made a mistake that must be named.
NOT_BOOLEANS: dict[str, str] = {
    "string-yes": '"yes"',
    "string-true": '"true"',
    "string-false": '"false"',
    "number-1": "1",
    "number-0": "0",
    "null": "null",
    "list-true": "[true]",
}
NOT_NUMBERS: dict[str, str] = {
    "numeric-string": '"60"',
    "decimal-string": '"0.5"',
    "boolean-true": "true",
    "boolean-false": "false",
    "list": "[60]",
    "object": '{"value": 60}',
}


def lookalike_cases(
    prefix: str,
    method: str,
    route: str,
    url: str,
    valid: dict[str, Any],
    field: str,
    kind: str,
) -> list[Case]:
    """``field`` sent each value in NOT_BOOLEANS or NOT_NUMBERS: a 422 that says what it must
    be. ``kind`` is "boolean", "number" or "whole number" (as the reply words it)."""
    tokens = NOT_BOOLEANS if kind == "boolean" else NOT_NUMBERS
    expected = {
        "boolean": f"{field}: must be true or false (a JSON boolean",
        "number": f"{field}: must be a number (a JSON number",
        "whole number": f"{field}: must be a whole number (a JSON number",
    }[kind]
    return [
        Case(
            f"{prefix}-{field}-not-a-{kind.replace(' ', '-')}-{name}",
            method,
            route,
            url,
            422,
            splice(valid, field, token),
            detail=expected,
        )
        for name, token in tokens.items()
    ]


DEEP_ARRAY = b"[" * 10_000 + b"]" * 10_000
DEEP_OBJECT = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
TWO_MEGABYTES = encode({"message": "a" * 2 * MAX_BODY_BYTES})
INVALID_UTF8 = b'{"message": "\xff\xfe\xc3\x28 plan my meals"}'
HUGE_LIST = ["x"] * 100_000


def shape_cases(
    prefix: str, method: str, route: str, url: str, valid: dict[str, Any], parsed: int = 422
) -> list[Case]:
    """Attacks on a JSON body as a whole: size, depth, top-level type, encoding, media type.

    ``parsed`` is the status once the body has been decoded: 422 where the route validates
    it first, 503 on the backup routes (see the module docstring).
    """

    def row(name: str, status: int, body: bytes, **kw: Any) -> Case:
        return Case(f"{prefix}-{name}", method, route, url, status, body, **kw)

    # The reply names the problem only where validation is what answers.
    shape = "JSON object" if parsed == 422 else None
    return [
        row("2mb-body", 413, TWO_MEGABYTES, detail="at most"),
        row("2mb-body-chunked", 413, TWO_MEGABYTES, detail="at most", chunked=True),
        # A body that cannot be decoded is refused before any dependency runs, so always
        # with 422, in the shape of every other validation error.
        row("depth-10000-array", 422, DEEP_ARRAY, detail="too deeply"),
        row("depth-10000-object", 422, DEEP_OBJECT, detail="too deeply"),
        row("invalid-utf8", 422, INVALID_UTF8, detail="not valid UTF-8"),
        row("empty-body", parsed, b"", detail="body is required" if shape else None),
        row("top-level-null", parsed, b"null", detail=shape),
        row("top-level-list", parsed, encode([valid]), detail=shape),
        row("top-level-string", parsed, encode("plan my meals"), detail=shape),
        row("top-level-number", parsed, b"42", detail=shape),
        row("top-level-100k-list", parsed, encode(HUGE_LIST), detail=shape),
        row("truncated-json", 422, b'{"message": "pl', detail="not valid JSON"),
        # Without a JSON media type the body is never parsed, so it is not an object.
        row("wrong-content-type", parsed, encode(valid), content_type="text/plain", detail=shape),
        row("no-content-type", parsed, encode(valid), content_type=None, detail=shape),
        row(
            "form-content-type",
            parsed,
            b"message=plan+my+meals",
            content_type="application/x-www-form-urlencoded",
            detail=shape,
        ),
        row(
            "unknown-field",
            parsed,
            encode({**valid, "__proto__": {"admin": True}}),
            detail="__proto__" if shape else None,
        ),
    ]


def ignored_body_cases(prefix: str, method: str, route: str, url: str, status: int) -> list[Case]:
    """Routes without a body never read it: junk passes through, only the size limit bites."""

    def row(name: str, code: int, body: bytes, **kw: Any) -> Case:
        return Case(f"{prefix}-{name}", method, route, url, code, body, **kw)

    return [
        row("2mb-body", 413, TWO_MEGABYTES, detail="at most"),
        row("depth-10000-array-ignored", status, DEEP_ARRAY),
        row("invalid-utf8-ignored", status, INVALID_UTF8),
        row("truncated-json-ignored", status, b'{"a": '),
    ]


def query_cases(prefix: str, route: str, status: int) -> list[Case]:
    """Unknown and repeated query parameters on a route that takes none."""
    return [
        Case(f"{prefix}-unknown-query", "GET", route, f"{route}?--password-file=x", status),
        Case(f"{prefix}-repeated-query", "GET", route, f"{route}?a=1&a=2&a=%00", status),
        Case(f"{prefix}-10k-query", "GET", route, f"{route}?q={'a' * 10_000}", status),
    ]


# --- POST /chat -------------------------------------------------------------------------

CHAT = "/chat"
CHAT_OK = {"message": "plan my meals", "userId": "u1"}


def _chat_cases() -> list[Case]:
    rows = shape_cases("chat", "POST", CHAT, CHAT, CHAT_OK)
    # A message is free text: everything in it is the user's words, answered like any other,
    # except what is over the length limit, and a NUL, which PostgreSQL cannot store.
    for name, value in STRINGS.items():
        status, detail = free_text_outcome(name, "message", MAX_MESSAGE_CHARS)
        if name == "nul-byte":
            status, detail = 422, "NUL character"
        rows.append(
            Case(
                f"chat-message-{name}",
                "POST",
                CHAT,
                CHAT,
                status,
                encode({**CHAT_OK, "message": f"plan my meals {value}"}),
                detail="limit is 4000" if name == "10k-chars" else detail,
            )
        )
    # A user id is a key in every store and a label in telemetry: a strict alphabet.
    for name, value in STRINGS.items():
        valid_id = name == "unknown-name"
        rows.append(
            Case(
                f"chat-userId-{name}",
                "POST",
                CHAT,
                CHAT,
                200 if valid_id else 422,
                encode({**CHAT_OK, "userId": value}),
                detail=None if valid_id else "userId",
            )
        )
    for name, token in NUMBERS.items():
        rows.append(
            Case(
                f"chat-message-{name}",
                "POST",
                CHAT,
                CHAT,
                422,
                splice(CHAT_OK, "message", token),
                detail="message",
            )
        )
    rows += [
        Case("chat-message-100k-list", "POST", CHAT, CHAT, 422, encode({"message": HUGE_LIST})),
        Case("chat-message-null", "POST", CHAT, CHAT, 422, b'{"message": null}', detail="message"),
        Case(
            "chat-message-missing",
            "POST",
            CHAT,
            CHAT,
            422,
            b'{"userId": "u1"}',
            detail="message is required",
        ),
        Case("chat-message-whitespace", "POST", CHAT, CHAT, 422, encode({"message": " \t\n"})),
        Case(
            "chat-message-only-nul",
            "POST",
            CHAT,
            CHAT,
            422,
            encode({"message": "\x00"}),
            detail="NUL character",
        ),
        Case(
            "chat-duplicate-keys",
            "POST",
            CHAT,
            CHAT,
            422,
            b'{"message": "", "message": "plan my meals"}',
            detail='gives the key "message" more than once',
        ),
        Case(
            "chat-duplicate-keys-last-is-empty",
            "POST",
            CHAT,
            CHAT,
            422,
            b'{"message": "plan my meals", "message": ""}',
            detail='gives the key "message" more than once',
        ),
        Case("chat-wrong-method", "GET", CHAT, CHAT, 405),
    ]
    return rows


# --- /api/profiles/{userId} --------------------------------------------------------------

PROFILE = "/api/profiles/{userId}"
PROFILE_OK = {"age": 30, "weightKg": 80, "heightCm": 180, "sex": "male"}


def _profile_path_status(name: str, method: str) -> int:
    if name in ("dotdot-traversal", "path-separator"):
        return 404  # no route matches once the path has more segments
    if name == "encoded-traversal":
        return 307  # "%2e%2e%2f" decodes to "../": the trailing slash is redirected away
    if name == "unknown-name":
        return 404 if method == "GET" else 200
    return 422


def _profile_cases() -> list[Case]:
    rows: list[Case] = []
    for method in ("GET", "PUT"):
        for name in STRINGS:
            status = _profile_path_status(name, method)
            rows.append(
                Case(
                    f"profile-{method.lower()}-user_id-{name}",
                    method,
                    PROFILE,
                    f"/api/profiles/{in_url(name)}",
                    status,
                    encode(PROFILE_OK) if method == "PUT" else None,
                    detail="userId" if status == 422 else None,
                )
            )
    url = "/api/profiles/u1"
    rows += shape_cases("profile-put", "PUT", PROFILE, url, PROFILE_OK)
    for field in ("age", "weightKg", "heightCm"):
        for name, token in NUMBERS.items():
            rows.append(
                Case(
                    f"profile-{field}-{name}",
                    "PUT",
                    PROFILE,
                    url,
                    422,
                    splice(PROFILE_OK, field, token),
                    detail=field,
                )
            )
    rows += lookalike_cases("profile", "PUT", PROFILE, url, PROFILE_OK, "age", "whole number")
    for field in ("weightKg", "heightCm"):
        rows += lookalike_cases("profile", "PUT", PROFILE, url, PROFILE_OK, field, "number")
    for name, value in STRINGS.items():
        rows.append(
            Case(
                f"profile-sex-{name}",
                "PUT",
                PROFILE,
                url,
                422,
                encode({"sex": value}),
                detail="sex",
            )
        )
    rows += [
        Case(
            "profile-equipment-100k-list",
            "PUT",
            PROFILE,
            url,
            422,
            encode({"equipment": HUGE_LIST}),
            detail="equipment",
        ),
        Case(
            "profile-equipment-traversal",
            "PUT",
            PROFILE,
            url,
            422,
            encode({"equipment": ["../etc/passwd"]}),
            detail="equipment",
        ),
        Case(
            "profile-age-fraction",
            "PUT",
            PROFILE,
            url,
            422,
            b'{"age": 30.5}',
            detail="age",
        ),
        # A JSON number is a number however it is written: 30.0 is the age 30, and an
        # integer weight is a weight.
        Case("profile-age-integral-decimal", "PUT", PROFILE, url, 200, b'{"age": 30.0}'),
        Case("profile-weightKg-integer", "PUT", PROFILE, url, 200, b'{"weightKg": 80}'),
        Case(
            "profile-duplicate-keys",
            "PUT",
            PROFILE,
            url,
            422,
            b'{"age": -5, "age": 30}',
            detail='gives the key "age" more than once',
        ),
        Case("profile-wrong-method", "DELETE", PROFILE, url, 405),
    ]
    return rows


# --- circuit breakers -------------------------------------------------------------------

BREAKERS = "/api/emergency/circuit-breakers"
BREAKER = "/api/emergency/circuit-breakers/{name}"
RESET = "/api/emergency/circuit-breaker/{name}/reset"
FORCE_OPEN = "/api/emergency/circuit-breaker/{name}/force-open"
RELEASE = "/api/emergency/circuit-breaker/{name}/release"
DISABLE = "/api/emergency/circuit-breaker/{name}/disable"
ENABLE = "/api/emergency/circuit-breaker/{name}/enable"
FORCE_OPEN_OK = {"reason": "maintenance", "ttlSeconds": 60}


def _breaker_name_status(name: str, route: str) -> int:
    if name == "alias-with-space":
        return 200  # names are trimmed and case-folded, so "mca " is the router
    if name == "encoded-traversal" and route.endswith("{name}"):
        return 307
    return 404  # an unknown agent, or no route once the path has more segments


def _breaker_cases() -> list[Case]:
    rows = query_cases("breakers", BREAKERS, 200)
    for route, method, body in (
        (BREAKER, "GET", None),
        (RESET, "POST", encode({"force": True})),
        (FORCE_OPEN, "POST", encode(FORCE_OPEN_OK)),
        (RELEASE, "POST", None),
        (DISABLE, "POST", None),
        (ENABLE, "POST", None),
    ):
        action = route.rsplit("/", 1)[-1] if route != BREAKER else "get"
        for name in STRINGS:
            status = _breaker_name_status(name, route)
            rows.append(
                Case(
                    f"breaker-{action}-name-{name}",
                    method,
                    route,
                    route.replace("{name}", in_url(name)),
                    status,
                    body,
                    detail="no agent named" if name == "unknown-name" else None,
                )
            )

    reset_url = RESET.replace("{name}", "budget")
    rows += shape_cases("breaker-reset", "POST", RESET, reset_url, {"force": True})
    # The reset body is optional: no body at all is a reset without force.
    rows = [
        r
        if r.id not in ("breaker-reset-empty-body", "breaker-reset-top-level-null")
        else with_status(r, 200)
        for r in rows
    ]
    for name, token in {"string-yes": '"yes"', "number-2": "2", "nan": "NaN", "list": "[]"}.items():
        rows.append(
            Case(
                f"breaker-reset-force-{name}",
                "POST",
                RESET,
                reset_url,
                422,
                splice({}, "force", token),
                detail="force",
            )
        )

    rows += lookalike_cases("breaker-reset", "POST", RESET, reset_url, {}, "force", "boolean")

    force_url = FORCE_OPEN.replace("{name}", "budget")
    rows += lookalike_cases(
        "breaker-force-open", "POST", FORCE_OPEN, force_url, FORCE_OPEN_OK, "ttlSeconds", "number"
    )
    rows += shape_cases("breaker-force-open", "POST", FORCE_OPEN, force_url, FORCE_OPEN_OK)
    for name, token in NUMBERS.items():
        rows.append(
            Case(
                f"breaker-force-open-ttlSeconds-{name}",
                "POST",
                FORCE_OPEN,
                force_url,
                422,
                splice(FORCE_OPEN_OK, "ttlSeconds", token),
                detail="ttlSeconds",
            )
        )
    # A reason is free text kept in the breaker's history and echoed in replies.
    for name, value in STRINGS.items():
        status, detail = reason_outcome(name, "reason", 500)
        rows.append(
            Case(
                f"breaker-force-open-reason-{name}",
                "POST",
                FORCE_OPEN,
                force_url,
                status,
                encode({**FORCE_OPEN_OK, "reason": value}),
                detail=detail,
            )
        )
    rows += [
        Case(
            "breaker-force-open-reason-empty",
            "POST",
            FORCE_OPEN,
            force_url,
            422,
            encode({"reason": ""}),
            detail="reason",
        ),
        Case(
            "breaker-force-open-reason-blank",
            "POST",
            FORCE_OPEN,
            force_url,
            422,
            encode({"reason": " \t\n "}),
            detail="must say why",
        ),
        Case(
            "breaker-force-open-ttl-over-a-week",
            "POST",
            FORCE_OPEN,
            force_url,
            422,
            encode({"reason": "x", "ttlSeconds": 7 * 24 * 3600 + 1}),
            detail="ttlSeconds",
        ),
    ]

    # Release, disable and enable take no options: no body, null or {} (before, the body was
    # not read at all, so a "reason" was dropped without a word).
    for action, route in (("release", RELEASE), ("disable", DISABLE), ("enable", ENABLE)):
        url = route.replace("{name}", "budget")
        optional = (f"breaker-{action}-empty-body", f"breaker-{action}-top-level-null")
        rows += [
            with_status(r, 200) if r.id in optional else r
            for r in shape_cases(f"breaker-{action}", "POST", route, url, {})
        ]
        field = encode({"reason": "x"})
        rows.append(
            Case(f"breaker-{action}-reason", "POST", route, url, 422, field, detail="reason")
        )
    return rows


# --- status, health, metrics, test-system, probes -----------------------------------------

STATUS = "/api/emergency/status"
HEALTH = "/api/emergency/health"
METRICS = "/api/emergency/metrics"
TEST_SYSTEM = "/api/emergency/test-system"


def _status_cases() -> list[Case]:
    rows = query_cases("status", STATUS, 200)
    rows.append(Case("status-timeRange-ignored", "GET", STATUS, f"{STATUS}?timeRange=-1", 200))
    for name, value in {
        "abc": "abc",
        "dashdash-option": "--password-file%3Dx",
        "nul-byte": "%00",
        "number-2": "2",
        "repeated-last-invalid": "true&refresh=abc",
        "empty": "",
    }.items():
        rows.append(
            Case(
                f"health-refresh-{name}",
                "GET",
                HEALTH,
                f"{HEALTH}?refresh={value}",
                422,
                detail="refresh",
            )
        )
    for name, value in {
        "negative": "-1",
        "zero": "0",
        "169": "169",
        "1e9": "1e9",
        "abc": "abc",
        "nan": "NaN",
        "infinity": "inf",
        "minus-infinity": "-inf",
        "10e30": str(10**30),
        "empty": "",
        "boolean": "true",
        "fullwidth-digits": quote("\uff12\uff14"),
        "nul-byte": "24%00",
        "10k-chars": "9" * 10_000,
        "repeated-last-invalid": "24&timeRange=abc",
    }.items():
        rows.append(
            Case(
                f"metrics-timeRange-{name}",
                "GET",
                METRICS,
                f"{METRICS}?timeRange={value}",
                422,
                detail="timeRange",
            )
        )
    # A repeated parameter is refused: before, its last value was taken, whatever came first.
    rows += [
        Case(
            f"metrics-timeRange-{name}",
            "GET",
            METRICS,
            f"{METRICS}?{value}",
            422,
            detail="query parameter timeRange is given more than once",
        )
        for name, value in {
            "repeated-valid": "timeRange=1&timeRange=168",
            "repeated-first-invalid": "timeRange=abc&timeRange=24",
        }.items()
    ]
    rows += ignored_body_cases("test-system", "POST", TEST_SYSTEM, TEST_SYSTEM, 200)
    rows.append(Case("test-system-wrong-method", "GET", TEST_SYSTEM, TEST_SYSTEM, 405))
    for probe in ("/livez", "/readyz"):
        name = probe.strip("/")
        rows += query_cases(name, probe, 200)
        rows.append(Case(f"{name}-wrong-method", "POST", probe, probe, 405, b"{}"))
    return rows


# --- backups and rollback (backups off: 503 once the body decodes) ------------------------

BACKUPS = "/api/emergency/backups"
BACKUP = "/api/emergency/backups/{backup_id}"
CREATE = "/api/emergency/backups/create"
TEST_ROLLBACK = "/api/emergency/backups/test-rollback"
ROLLBACK = "/api/emergency/rollback"
CHECK = "/api/emergency/backups/check"
PRUNE = "/api/emergency/backups/prune"
REFRESH = "/api/emergency/backups/refresh"
INIT = "/api/emergency/backups/init"
SNAPSHOT = "0123abcd"


def _backup_id_status(name: str) -> int:
    if name in ("dotdot-traversal", "path-separator"):
        return 404
    if name == "encoded-traversal":
        return 307
    return 503


def _backup_cases() -> list[Case]:
    rows = query_cases("backups", BACKUPS, 503)
    for name in STRINGS:
        rows.append(
            Case(
                f"backup-id-{name}",
                "GET",
                BACKUP,
                f"{BACKUPS}/{in_url(name)}",
                _backup_id_status(name),
            )
        )
    bodies: dict[str, tuple[str, dict[str, Any], str]] = {
        "create": (CREATE, {"reason": "manual", "type": "profiles"}, "type"),
        "test-rollback": (TEST_ROLLBACK, {"backupId": SNAPSHOT}, "backupId"),
        "rollback": (
            ROLLBACK,
            {"backupId": SNAPSHOT, "confirm": True, "reason": "bad deploy"},
            "backupId",
        ),
    }
    for prefix, (route, valid, id_field) in bodies.items():
        rows += shape_cases(prefix, "POST", route, route, valid, parsed=503)
        for name, value in STRINGS.items():
            rows.append(
                Case(
                    f"{prefix}-{id_field}-{name}",
                    "POST",
                    route,
                    route,
                    503,
                    encode({**valid, id_field: value}),
                )
            )
        for name, token in NUMBERS.items():
            rows.append(
                Case(
                    f"{prefix}-{id_field}-{name}",
                    "POST",
                    route,
                    route,
                    503,
                    splice(valid, id_field, token),
                )
            )
    rows += [
        Case(
            "test-rollback-components-100k-list",
            "POST",
            TEST_ROLLBACK,
            TEST_ROLLBACK,
            503,
            encode({"backupId": SNAPSHOT, "components": HUGE_LIST}),
        ),
        Case(
            "rollback-confirm-string-yes",
            "POST",
            ROLLBACK,
            ROLLBACK,
            503,
            encode({"backupId": SNAPSHOT, "confirm": "yes", "reason": "x"}),
        ),
        Case(
            "rollback-beforeIncident-sql-injection",
            "POST",
            ROLLBACK,
            ROLLBACK,
            503,
            encode({"beforeIncident": "' OR 1=1 --", "confirm": True, "reason": "x"}),
        ),
        Case(
            "create-reason-10k-chars",
            "POST",
            CREATE,
            CREATE,
            503,
            encode({"reason": "a" * 10_000}),
        ),
    ]
    for route in (CHECK, PRUNE, REFRESH, INIT):
        name = route.rsplit("/", 1)[-1]
        rows += ignored_body_cases(f"backups-{name}", "POST", route, route, 503)
    return rows


# With backups on, the rollback body is validated before anything is rolled back: these
# rows run against an app whose restic repository is connected (see test_hostile_inputs).
ROLLBACK_OK = {"backupId": SNAPSHOT, "confirm": True, "reason": "bad deploy"}
CONFIRM_MUST_BE_TRUE = "confirm: must be true (a JSON boolean, without quotes) to roll back"


def _rollback_with_backups_cases() -> list[Case]:
    rows = [
        Case(
            f"rollback-on-confirm-{name}",
            "POST",
            ROLLBACK,
            ROLLBACK,
            422,
            splice(ROLLBACK_OK, "confirm", token),
            detail=CONFIRM_MUST_BE_TRUE,
        )
        for name, token in {**NOT_BOOLEANS, "string-yes-upper": '"YES"', "on": '"on"'}.items()
    ]
    rows += [
        Case(
            "rollback-on-confirm-false",
            "POST",
            ROLLBACK,
            ROLLBACK,
            400,
            encode({**ROLLBACK_OK, "confirm": False}),
            detail='send "confirm": true',
        ),
        Case(
            "rollback-on-confirm-missing",
            "POST",
            ROLLBACK,
            ROLLBACK,
            400,
            encode({"backupId": SNAPSHOT, "reason": "x"}),
            detail='send "confirm": true',
        ),
        # A well-formed rollback to a snapshot the repository does not hold.
        Case("rollback-on-unknown-snapshot", "POST", ROLLBACK, ROLLBACK, 404, encode(ROLLBACK_OK)),
    ]
    return rows


# --- fault injection ----------------------------------------------------------------------

SIMULATE = "/api/emergency/simulate-error"
MINIMAL = "/api/emergency/minimal-mode"
SIMULATE_OK = {"errorType": "agent", "component": "budget", "count": 1}


def _component_status(name: str, where: str) -> int:
    if name == "10k-chars" or (name == "lone-surrogate" and where == "body"):
        return 422
    if name == "alias-with-space":
        return 200
    return 404


def _simulate_cases() -> list[Case]:
    rows = shape_cases("simulate", "POST", SIMULATE, SIMULATE, SIMULATE_OK)
    for name, value in STRINGS.items():
        status = _component_status(name, "body")
        rows.append(
            Case(
                f"simulate-component-{name}",
                "POST",
                SIMULATE,
                SIMULATE,
                status,
                encode({**SIMULATE_OK, "component": value}),
                detail={422: "component", 404: "no agent named", 200: None}[status],
            )
        )
    for name, value in STRINGS.items():
        rows.append(
            Case(
                f"simulate-errorType-{name}",
                "POST",
                SIMULATE,
                SIMULATE,
                422,
                encode({**SIMULATE_OK, "errorType": value}),
                detail="errorType",
            )
        )
    for field in ("count", "failureRate", "delaySeconds", "durationSeconds"):
        for name, token in NUMBERS.items():
            # Zero latency is the default; every other field must be positive.
            if field == "delaySeconds" and name == "zero":
                continue
            rows.append(
                Case(
                    f"simulate-{field}-{name}",
                    "POST",
                    SIMULATE,
                    SIMULATE,
                    422,
                    splice(SIMULATE_OK, field, token),
                    detail=field,
                )
            )
    rows += lookalike_cases(
        "simulate", "POST", SIMULATE, SIMULATE, SIMULATE_OK, "count", "whole number"
    )
    for field in ("failureRate", "delaySeconds", "durationSeconds"):
        rows += lookalike_cases(
            "simulate", "POST", SIMULATE, SIMULATE, SIMULATE_OK, field, "number"
        )
    # Where a decimal is expected an integer is a number all the same.
    rows.append(
        Case(
            "simulate-failureRate-integer",
            "POST",
            SIMULATE,
            SIMULATE,
            200,
            encode({**SIMULATE_OK, "failureRate": 1, "durationSeconds": 60}),
        )
    )
    for name in STRINGS:
        status = _component_status(name, "query")
        rows.append(
            Case(
                f"simulate-clear-component-{name}",
                "DELETE",
                SIMULATE,
                f"{SIMULATE}?component={in_url(name)}",
                status,
                detail={422: "component", 404: "no agent named", 200: None}[status],
            )
        )
    rows += [
        Case(
            "simulate-clear-component-repeated",
            "DELETE",
            SIMULATE,
            f"{SIMULATE}?component=budget&component=NOPE",
            422,
            detail="query parameter component is given more than once",
        ),
        Case("simulate-wrong-method", "GET", SIMULATE, SIMULATE, 405),
        # Ending minimal mode takes no body and no query: whatever is sent is ignored.
        Case("minimal-mode-end-when-off", "DELETE", MINIMAL, MINIMAL, 200),
        Case(
            "minimal-mode-end-with-a-body",
            "DELETE",
            MINIMAL,
            MINIMAL,
            200,
            encode({"until": "never", "force": "yes"}),
        ),
        Case("minimal-mode-wrong-method", "PUT", MINIMAL, MINIMAL, 405),
    ]
    return rows


# --- incidents and kept traces ------------------------------------------------------------

INCIDENTS = "/api/emergency/incidents"
INCIDENT = "/api/emergency/incidents/{incident_id}"
ACKNOWLEDGE = "/api/emergency/incidents/{incident_id}/acknowledge"
RESOLVE = "/api/emergency/incidents/{incident_id}/resolve"
TRACE = "/api/emergency/traces/{trace_id}"
AUDIT = "/api/emergency/audit"
UNKNOWN_INCIDENT = "INC_0000000000000_abcdef"
UNKNOWN_TRACE = "0" * 31 + "1"


def _id_path_status(name: str, last_segment: bool = True) -> int:
    if name in ("dotdot-traversal", "path-separator"):
        return 404
    if name == "encoded-traversal":
        return 307 if last_segment else 404
    return 422  # ids have a fixed shape, so every other hostile string fails its pattern


def _incident_cases() -> list[Case]:
    rows: list[Case] = []
    for name, value in {
        "status-unknown": "status=NOPE",
        "status-sql-injection": "status=" + quote("' OR 1=1 --"),
        "severity-unknown": "severity=" + quote("critical "),
        "component-10k-chars": "component=" + "a" * 10_000,
        "component-empty": "component=",
        "since-abc": "since=abc",
        "since-year-0": "since=0000-00-00T00:00:00",
        "since-overflow": "since=" + "9" * 30,
        "limit-negative": "limit=-1",
        "limit-zero": "limit=0",
        "limit-over-max": "limit=501",
        "limit-1e9": "limit=1e9",
        "limit-nan": "limit=NaN",
        "limit-10e30": f"limit={10**30}",
        "limit-repeated-last-invalid": "limit=5&limit=abc",
        # Which was meant cannot be told: before, the last was taken and the first ignored.
        "limit-repeated-valid": "limit=abc&limit=5",
        "status-repeated": "status=open&status=resolved",
        "offset-negative": "offset=-1",
        "offset-10e30": f"offset={10**30}",
    }.items():
        field = name.split("-", 1)[0]
        rows.append(
            Case(f"incidents-{name}", "GET", INCIDENTS, f"{INCIDENTS}?{value}", 422, detail=field)
        )
    # Values that reach the store as bound parameters, never as SQL text.
    for name, value in {
        "component-sql-injection": "component=" + quote("' OR 1=1 --"),
        "component-nul-byte": "component=a%00b",
        "component-rtl-override": "component=" + quote(STRINGS["rtl-override"]),
        "since-epoch": "since=1970-01-01T00:00:00Z",
    }.items():
        rows.append(Case(f"incidents-{name}", "GET", INCIDENTS, f"{INCIDENTS}?{value}", 200))

    for route, method, body, action in (
        (INCIDENT, "GET", None, "get"),
        (ACKNOWLEDGE, "POST", encode({"note": "looking"}), "acknowledge"),
        (RESOLVE, "POST", encode({"resolution": "fixed"}), "resolve"),
    ):
        for name in [*STRINGS, "lowercase-prefix"]:
            segment = "inc_0000000000000_abcdef" if name == "lowercase-prefix" else in_url(name)
            status = (
                422 if name == "lowercase-prefix" else _id_path_status(name, route.endswith("}"))
            )
            rows.append(
                Case(
                    f"incident-{action}-id-{name}",
                    method,
                    route,
                    route.replace("{incident_id}", segment),
                    status,
                    body,
                    detail="incident_id" if status == 422 else None,
                )
            )
        rows.append(
            Case(
                f"incident-{action}-id-unknown",
                method,
                route,
                route.replace("{incident_id}", UNKNOWN_INCIDENT),
                404,
                body,
                detail=UNKNOWN_INCIDENT,
            )
        )

    ack_url = ACKNOWLEDGE.replace("{incident_id}", UNKNOWN_INCIDENT)
    resolve_url = RESOLVE.replace("{incident_id}", UNKNOWN_INCIDENT)
    rows += shape_cases("acknowledge", "POST", ACKNOWLEDGE, ack_url, {"note": "x"})
    # The note is optional, so no body at all is an acknowledgement of an unknown incident.
    rows = [
        with_status(r, 404)
        if r.id in ("acknowledge-empty-body", "acknowledge-top-level-null")
        else r
        for r in rows
    ]
    rows += shape_cases("resolve", "POST", RESOLVE, resolve_url, {"resolution": "x"})
    rows.append(
        Case(
            "resolve-resolution-blank",
            "POST",
            RESOLVE,
            resolve_url,
            422,
            encode({"resolution": "   "}),
            detail="must say why",
        )
    )
    for prefix, url, route, field, max_chars, outcome in (
        ("acknowledge", ack_url, ACKNOWLEDGE, "note", 2000, reason_outcome),
        ("resolve", resolve_url, RESOLVE, "resolution", 2000, reason_outcome),
    ):
        for name, value in STRINGS.items():
            status, detail = outcome(name, field, max_chars, ok=404)
            rows.append(
                Case(
                    f"{prefix}-{field}-{name}",
                    "POST",
                    route,
                    url,
                    status,
                    encode({field: value}),
                    detail=detail,
                )
            )
        for name, token in NUMBERS.items():
            rows.append(
                Case(
                    f"{prefix}-{field}-{name}",
                    "POST",
                    route,
                    url,
                    422,
                    splice({}, field, token),
                    detail=field,
                )
            )

    for name in [*STRINGS, "uppercase-hex", "31-chars", "33-chars"]:
        segment = {
            "uppercase-hex": "A" * 32,
            "31-chars": "a" * 31,
            "33-chars": "a" * 33,
        }.get(name) or in_url(name)
        status = _id_path_status(name) if name in STRINGS else 422
        rows.append(
            Case(
                f"trace-id-{name}",
                "GET",
                TRACE,
                TRACE.replace("{trace_id}", segment),
                status,
                detail="trace_id" if status == 422 else None,
            )
        )
    rows.append(
        Case(
            "trace-id-unknown",
            "GET",
            TRACE,
            TRACE.replace("{trace_id}", UNKNOWN_TRACE),
            404,
            detail="not kept",
        )
    )
    for name, value in {
        "limit-zero": "limit=0",
        "limit-over-max": "limit=1001",
        "limit-negative": "limit=-1",
        "limit-nan": "limit=NaN",
        "limit-10e30": f"limit={10**30}",
        "limit-sql-injection": "limit=" + quote("1; DROP TABLE audit"),
    }.items():
        rows.append(Case(f"audit-{name}", "GET", AUDIT, f"{AUDIT}?{value}", 422, detail="limit"))
    rows.append(Case("audit-limit-max", "GET", AUDIT, f"{AUDIT}?limit=1000", 200))
    return rows


# --- Alertmanager webhook -----------------------------------------------------------------

ALERTS = "/api/emergency/alerts"
ALERT = {
    "status": "firing",
    "labels": {"alertname": "ErsHostileInput"},
    "annotations": {},
    "startsAt": "2024-01-01T00:00:00Z",
    "fingerprint": "abc123",
}
WEBHOOK = {
    "version": "4",
    "groupKey": "{}:{}",
    "status": "firing",
    "receiver": "ers",
    "alerts": [ALERT],
}


def _alert_with(**changes: Any) -> bytes:
    return encode({**WEBHOOK, "alerts": [{**ALERT, **changes}]})


def _alert_cases() -> list[Case]:
    rows = shape_cases("alerts", "POST", ALERTS, ALERTS, WEBHOOK)
    # Unknown fields are ignored: Alertmanager adds fields between releases.
    rows = [with_status(r, 200) if r.id == "alerts-unknown-field" else r for r in rows]
    # A count of alerts left out: a whole number from zero up to a billion.
    for name, token in NUMBERS.items():
        accepted = name == "zero"
        rows.append(
            Case(
                f"alerts-truncatedAlerts-{name}",
                "POST",
                ALERTS,
                ALERTS,
                200 if accepted else 422,
                splice(WEBHOOK, "truncatedAlerts", token),
                detail=None if accepted else "truncatedAlerts",
            )
        )
    for name, value in STRINGS.items():
        alphanumeric = name == "unknown-name"
        rows.append(
            Case(
                f"alerts-fingerprint-{name}",
                "POST",
                ALERTS,
                ALERTS,
                200 if alphanumeric else 422,
                _alert_with(fingerprint=value),
                detail=None if alphanumeric else "fingerprint",
            )
        )
    # Labels steer actions (``action``, ``agent``): hostile values must name nothing real,
    # be recorded, and be answered without an action running.
    for name, value in STRINGS.items():
        status = 422 if name in ("lone-surrogate", "10k-chars") else 200  # a label: 4096 at most
        rows.append(
            Case(
                f"alerts-action-labels-{name}",
                "POST",
                ALERTS,
                ALERTS,
                status,
                _alert_with(
                    labels={"alertname": "ErsHostileInput", "action": value, "agent": value}
                ),
                detail="labels" if status == 422 else None,
            )
        )
    rows += [
        Case(
            "alerts-version-5",
            "POST",
            ALERTS,
            ALERTS,
            422,
            encode({**WEBHOOK, "version": "5"}),
            detail="version",
        ),
        Case(
            "alerts-version-number",
            "POST",
            ALERTS,
            ALERTS,
            422,
            encode({**WEBHOOK, "version": 4}),
            detail="version",
        ),
        Case(
            "alerts-no-alerts",
            "POST",
            ALERTS,
            ALERTS,
            422,
            encode({**WEBHOOK, "alerts": []}),
            detail="alerts",
        ),
        Case(
            "alerts-100k-alerts",
            "POST",
            ALERTS,
            ALERTS,
            422,
            encode({**WEBHOOK, "alerts": [0] * 100_000}),
            detail="alerts",
        ),
        Case(
            "alerts-labels-not-strings",
            "POST",
            ALERTS,
            ALERTS,
            422,
            _alert_with(labels={"alertname": ["x"]}),
            detail="labels",
        ),
        Case(
            "alerts-labels-100-entries",
            "POST",
            ALERTS,
            ALERTS,
            422,
            _alert_with(labels={f"l{i}": "v" for i in range(100)}),
            detail="labels",
        ),
        Case(
            "alerts-startsAt-abc",
            "POST",
            ALERTS,
            ALERTS,
            422,
            _alert_with(startsAt="abc"),
            detail="startsAt",
        ),
        Case(
            "alerts-startsAt-1e309",
            "POST",
            ALERTS,
            ALERTS,
            422,
            with_token(_alert_with(startsAt=TOKEN), "1e309"),
            detail="startsAt",
        ),
        Case(
            "alerts-groupKey-10k-chars",
            "POST",
            ALERTS,
            ALERTS,
            422,
            encode({**WEBHOOK, "groupKey": "a" * 10_000}),
            detail="groupKey",
        ),
    ]
    return rows


# --- OTLP/HTTP intake ---------------------------------------------------------------------

INTAKE = "/v1/traces"
TRACE_ID = "5b8efff798038103d269b633813fc60c"
SPAN_ID = "eee19b7ec3c1b174"


def otlp_json(span: dict[str, Any] | None = None, attributes: list[Any] | None = None) -> bytes:
    span = {
        "traceId": TRACE_ID,
        "spanId": SPAN_ID,
        "name": "agent.remote",
        "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": "1700000001000000000",
        "status": {"code": 2, "message": "boom"},
        **(span or {}),
    }
    return encode(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": attributes or []},
                    "scopeSpans": [{"spans": [span]}],
                }
            ]
        }
    )


def _gzip_bomb() -> bytes:
    return gzip.compress(b"\0" * (40 * 1_048_576), compresslevel=9)


def _intake_cases() -> list[Case]:
    def row(name: str, status: int, body: bytes, **kw: Any) -> Case:
        return Case(f"intake-{name}", "POST", INTAKE, INTAKE, status, body, **kw)

    protobuf = "application/x-protobuf"
    return [
        row("2mb-body", 413, TWO_MEGABYTES, detail="at most"),
        row("2mb-body-chunked", 413, TWO_MEGABYTES, detail="at most", chunked=True),
        row("depth-10000-array", 400, DEEP_ARRAY),
        row("depth-10000-object", 400, DEEP_OBJECT),
        row("invalid-utf8", 400, INVALID_UTF8, detail="JSON"),
        row("empty-json-body", 400, b"", detail="JSON"),
        row("top-level-null", 400, b"null", detail="resourceSpans"),
        row("top-level-list", 400, encode([1, 2]), detail="resourceSpans"),
        row("top-level-100k-list", 400, encode(HUGE_LIST), detail="resourceSpans"),
        row("truncated-json", 400, b'{"resourceSpans": [', detail="JSON"),
        row("wrong-content-type", 415, otlp_json(), content_type="text/plain"),
        row("no-content-type", 415, otlp_json(), content_type=None),
        row("protobuf-garbage", 400, b"\xff" * 64, content_type=protobuf, detail="protobuf"),
        row(
            "protobuf-nested-10000",
            400,
            b"\x0a\xff\xff\x03" * 10_000,
            content_type=protobuf,
            detail="protobuf",
        ),
        row(
            "gzip-bomb",
            400,
            _gzip_bomb(),
            headers=(("content-encoding", "gzip"),),
            detail="expands past",
        ),
        row(
            "gzip-garbage",
            400,
            b"not gzip at all",
            headers=(("content-encoding", "gzip"),),
            detail="gzip",
        ),
        row(
            "content-encoding-unknown",
            415,
            otlp_json(),
            headers=(("content-encoding", "br"),),
            detail="br",
        ),
        row("resourceSpans-string", 400, b'{"resourceSpans": "x"}', detail="OTLP"),
        row("traceId-not-hex", 400, otlp_json({"traceId": "zz" * 16}), detail="traceId"),
        row("traceId-short", 400, otlp_json({"traceId": "ab"}), detail="trace id"),
        row(
            "traceId-traversal",
            400,
            otlp_json({"traceId": "../etc/passwd"}),
            detail="traceId",
        ),
        row("spanId-number", 400, otlp_json({"spanId": 12}), detail="OTLP"),
        row("name-lone-surrogate", 400, otlp_json({"name": "\ud800"}), detail="OTLP"),
        row("name-10k-chars", 200, otlp_json({"name": "a" * 10_000})),
        row(
            "name-hostile-unicode",
            200,
            otlp_json({"name": STRINGS["rtl-override"] + STRINGS["nul-byte"]}),
        ),
        row(
            "start-time-10e30",
            400,
            with_token(otlp_json({"startTimeUnixNano": TOKEN}), str(10**30)),
            detail="OTLP",
        ),
        row(
            "attribute-int-10e30",
            400,
            otlp_json(attributes=[{"key": "a", "value": {"intValue": 10**30}}]),
            detail="OTLP",
        ),
        row(
            "attribute-double-nan",
            200,
            otlp_json(attributes=[{"key": "a", "value": {"doubleValue": "NaN"}}]),
        ),
        row(
            "attribute-key-sql-injection",
            200,
            otlp_json(attributes=[{"key": "' OR 1=1 --", "value": {"stringValue": "x"}}]),
        ),
        # Protobuf's JSON mapping reads true as enum value 1 (OK): not an error span, so
        # nothing is taken, and the reply is the empty success.
        row("status-code-boolean", 200, otlp_json({"status": {"code": True}})),
    ]


CASES: list[Case] = [
    *_chat_cases(),
    *_profile_cases(),
    *_breaker_cases(),
    *_status_cases(),
    *_backup_cases(),
    *_simulate_cases(),
    *_incident_cases(),
    *_alert_cases(),
    *_intake_cases(),
]
ROLLBACK_WITH_BACKUPS_CASES: list[Case] = _rollback_with_backups_cases()
