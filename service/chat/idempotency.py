"""Idempotency-Key: a client that retries a request after an error or a lost reply sends the
same key, and gets the first reply again instead of a second write.

A key names one request: the reply to a request that committed is remembered with the key
and a fingerprint of the request (its endpoint, user and body). The same key with the same
request replays that reply; with a different request it is refused (422), as Stripe does.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from service.errors import UserInputError
from service.stores.unit_of_work import RememberedReply

HEADER = "Idempotency-Key"
REPLAY_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 128


class InvalidIdempotencyKey(UserInputError):
    """The Idempotency-Key header is empty, too long or not printable."""


class KeyReused(UserInputError):
    """The key was first used with a different request."""


def valid_key(raw: str | None) -> str | None:
    """The key, or None when none was sent; raises InvalidIdempotencyKey naming the fix."""
    if raw is None:
        return None
    if not raw:
        raise InvalidIdempotencyKey(
            f"the {HEADER} header is empty; send a unique value per request (a UUID), or "
            "leave the header out"
        )
    if len(raw) > MAX_KEY_LENGTH:
        raise InvalidIdempotencyKey(
            f"the {HEADER} header is {len(raw)} characters long; the limit is "
            f"{MAX_KEY_LENGTH} (a UUID is 36)"
        )
    if not all(" " <= ch <= "~" for ch in raw):
        raise InvalidIdempotencyKey(
            f"the {HEADER} header may hold printable ASCII characters only; use a UUID"
        )
    return raw


def fingerprint(scope: str, request: dict[str, Any]) -> str:
    """What a key's request was, so that the same key with another request is caught."""
    canonical = json.dumps([scope, request], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def turn_key(scope: str, key: str | None, request: str) -> str:
    """Marks the rows a request writes: the same for every retry of one keyed request (its
    ``fingerprint``). Another request under a forgotten key is a new one: with the key alone,
    another user's expense was refused as recorded before, and nothing was recorded."""
    if key is None:
        return uuid.uuid4().hex
    return hashlib.sha256(f"{scope}\0{key}\0{request}".encode()).hexdigest()[:32]


def turn_key_before(scope: str, key: str | None) -> str | None:
    """The turn key of an expense stored before turn keys named the request: its retry,
    once the key is forgotten, is found by it and gets the 409, not a second expense."""
    if key is None:
        return None
    return hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()[:32]


def check_same_request(remembered: RememberedReply, request_fingerprint: str) -> None:
    """Raise KeyReused when a remembered key is sent again with another request."""
    if remembered.fingerprint != request_fingerprint:
        raise KeyReused(
            f"the {HEADER} '{remembered.key}' was already used for a different request "
            f"to {remembered.scope}; a key names one request, so send a new key for a new "
            "request (or repeat the first request exactly to get its reply again)"
        )
