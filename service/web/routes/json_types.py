"""Request-body fields that take a value only as JSON writes it.

Pydantic's lax mode turns ``"yes"``, ``1`` and ``"true"`` into ``True`` and ``"30"`` into
``30``. Where such a value steers what happens (a rollback's ``confirm``, a reset's ``force``,
a count, a time to live, a weight), a client that sends the wrong type has made a mistake
that must be named, not guessed at. These types accept JSON booleans as booleans and JSON
numbers as numbers (an integer where a decimal is expected, too), and nothing else; and text
only when it is Unicode (JSON's ``\ud800`` escape decodes to something that is not) without
a NUL character (``\u0000``), which PostgreSQL cannot store as text.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError

from service.errors import BIDI_CONTROLS, breaks_a_line


def json_kind(value: Any) -> str:
    """What a decoded JSON value is, in words; never the value itself, which may be hostile."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _boolean(value: Any) -> Any:
    if not isinstance(value, bool):
        raise PydanticCustomError(
            "json_boolean",
            "must be true or false (a JSON boolean, without quotes), not {kind}",
            {"kind": json_kind(value)},
        )
    return value


def _confirmation(value: Any) -> Any:
    if not isinstance(value, bool):
        raise PydanticCustomError(
            "json_confirmation",
            "must be true (a JSON boolean, without quotes) to roll back, not {kind}",
            {"kind": json_kind(value)},
        )
    return value


def _whole_number(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        kind = json_kind(value)
        if isinstance(value, float):
            kind = "a fraction" if math.isfinite(value) else "NaN or infinity"
        raise PydanticCustomError(
            "json_integer",
            "must be a whole number (a JSON number such as 30, without quotes), not {kind}",
            {"kind": kind},
        )
    return value


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError(
            "json_number",
            "must be a number (a JSON number such as 60 or 2.5, without quotes), not {kind}",
            {"kind": json_kind(value)},
        )
    if isinstance(value, float) and not math.isfinite(value):
        # Python's JSON reader takes NaN and Infinity; a range check would call a NaN
        # "more than 400", which sends the client looking in the wrong place.
        raise PydanticCustomError(
            "json_finite_number",
            "must be a finite number (a JSON number such as 60 or 2.5), not NaN or infinity",
        )
    return value


def _unicode_text(value: str) -> str:
    if "\x00" in value:
        # PostgreSQL's text cannot hold it: stored, the turn failed as an outage of the
        # store (503, a database incident) that no retry could get past.
        raise PydanticCustomError(
            "json_text_nul",
            "must not hold a NUL character (\\u0000), which cannot be stored; remove it",
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise PydanticCustomError(
                "json_text",
                "must be Unicode text; it holds a lone surrogate (an escape from \\ud800 to "
                "\\udfff without its pair), which can be neither stored nor logged",
            ) from None
    return value


def _says_why(value: str) -> str:
    words = _one_line(value)
    if not words:
        raise PydanticCustomError(
            "blank_reason", "must say why, in words: it is kept with what was done"
        )
    return words


def _one_line(value: str) -> str:
    words = _unicode_text(value).strip()
    # The spaces around the words are dropped, a trailing newline among them; inside, a line
    # break or an escape sequence breaks the table row that shows the reason.
    lead = len(value) - len(value.lstrip())
    for at, char in enumerate(words, lead + 1):
        if breaks_a_line(char):
            raise PydanticCustomError(
                "reason_control",
                "must be one line of plain text; it holds the {kind} character {char} at "
                "character {at}; remove it",
                {
                    "kind": "bidirectional formatting" if char in BIDI_CONTROLS else "control",
                    "char": f"U+{ord(char):04X}",
                    "at": at,
                },
            )
    return words


JsonBool = Annotated[bool, BeforeValidator(_boolean)]
"""true or false, nothing that merely looks like one."""

Confirmation = Annotated[bool, BeforeValidator(_confirmation)]
"""A destructive action's go-ahead: a JSON boolean; the route decides what false means."""

WholeNumber = BeforeValidator(_whole_number)
AnyNumber = BeforeValidator(_number)

JsonNumber = Annotated[float, AnyNumber]
"""A JSON number, integer or decimal; never a string or a boolean."""

# A bounded field that may be null states its bounds before the check:
# ``Annotated[int, Field(ge=1), WholeNumber] | None``. Given to the field's ``Field`` (or
# after the check) they are enforced all the same, but the OpenAPI document carries them
# as pydantic's own ``ge``/``le`` keys, which no JSON Schema reader knows, instead of
# ``minimum``/``maximum``: /docs showed no limit.


def _checked_text(value: object) -> object:
    """``_unicode_text`` before pydantic's own checks of a string: a length limit's check
    meets a lone surrogate first and says only "unable to parse raw data as a unicode
    string"."""
    return _unicode_text(value) if isinstance(value, str) else value


JsonText = Annotated[str, BeforeValidator(_checked_text)]
"""A JSON string that is Unicode text: never a lone surrogate such as ``"\\ud800"``, nor
``"\\u0000"``."""

Reason = Annotated[str, BeforeValidator(_checked_text), AfterValidator(_says_why)]
"""Why an operator acts (a forced open's reason, a rollback's reason, an incident's
resolution): ``JsonText`` with words in it, kept without the spaces around them, on one
line without control or bidirectional formatting characters; a blank one would leave nothing
in the trail to say why."""

OneLine = Annotated[str, BeforeValidator(_checked_text), AfterValidator(_one_line)]
"""A person's words kept with an action (an acknowledgement's note): a ``Reason`` that may be
blank."""
