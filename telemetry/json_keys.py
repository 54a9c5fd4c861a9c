"""JSON objects that give one key twice (``{"confirm": false, "confirm": true}``):
``json.loads`` keeps the last value, while a proxy, a log or a person reading the first saw
another document. ``loads_once_each`` refuses them instead."""

from __future__ import annotations

import json
import sys
from typing import Any


class RepeatedKey(ValueError):
    def __init__(self, key: str) -> None:
        # As a message shows the key: quoted, and cut at 80 characters.
        self.shown = json.dumps(key if len(key) <= 80 else f"{key[:80]}…")
        super().__init__(f"the key {self.shown} is given more than once in one object")
        self.key = key


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RepeatedKey(key)
            seen.add(key)
    return document


class TooLongNumber(ValueError):
    """An integer of more digits than Python reads (its own ValueError, no JSONDecodeError)."""

    digits = sys.get_int_max_str_digits()


def loads_once_each(body: bytes | str) -> Any:
    """``json.loads``, raising RepeatedKey for an object that gives one key twice and
    TooLongNumber for an integer Python will not read."""
    try:
        return json.loads(body, object_pairs_hook=_once_each)
    except (json.JSONDecodeError, UnicodeDecodeError, RepeatedKey):
        raise
    except ValueError as exc:
        raise TooLongNumber(str(exc)) from None
