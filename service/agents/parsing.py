"""Reading facts out of plain chat messages: profile details and money amounts.

A number is taken as written or not at all. A minus sign, an exponent, NaN or infinity, more
than two decimals in an amount, an amount over ``MAX_AMOUNT_CENTS``, or a profile figure
outside what the profile API accepts raises ``NotUnderstood``, which names what was read and
why it was not taken; the caller then records nothing. Reading ``$-400`` as $400 or ``$1e308``
as $1 would change what the user said without a word.
"""

from __future__ import annotations

import contextlib
import re
from decimal import Decimal
from typing import Any

from service.agents.profile_limits import AGE_LIMITS, HEIGHT_LIMITS, WEIGHT_LIMITS, Limits
from service.errors import UserInputError

# The largest single amount (a budget or an expense) the budget agent takes: $1,000,000.00.
# Anything above is far more likely a slip of the keyboard than a personal monthly figure.
MAX_AMOUNT_CENTS = 1_000_000_00


class NotUnderstood(UserInputError):
    """A number in a message that cannot be taken as written; nothing is recorded."""

    def __init__(self, written: str, problem: str, example: str, nothing: str) -> None:
        shown = written if len(written) <= 40 else written[:40] + "..."
        super().__init__(
            f"I did not understand '{shown}': {problem}. {nothing}; "
            f"please say it again, for example '{example}'."
        )


# A figure as written: an optional minus sign right before it, digits with any points and
# commas between them (what they may be is checked afterwards), an optional exponent. The
# atomic group keeps the regex from shortening "30.5" to "30" to make a pattern fit.
_MINUS = "\\-\u2212"  # ASCII hyphen-minus (escaped for character classes), U+2212
_FIGURE = (
    rf"(?P<minus>(?<![\w.,{_MINUS}])[{_MINUS}])?(?<![\w.,])"
    r"(?P<figure>(?>\d[\d.,]*\d|\d)(?:e[-+]?\d+)?)"
)
_PLAIN_FIGURE = re.compile(r"\d+(?:[.,]\d+)?")
_ANY_DIGIT = re.compile(r"\d")  # every figure pattern needs one (\d, as they use it)
_NOT_A_PROFILE_FIGURE = (
    r"%|percent|weeks?|days?|months?|hours?|min|times|x\b|reps?|sets?|dollars|euros?|bucks"
    r"|steps?|['\"]"
)
_NOT_AN_AGE = rf"kg|kilo|cm|lb|pound|ft|feet|foot|inch|m\b|{_NOT_A_PROFILE_FIGURE}"
_AGE = (
    re.compile(rf"\b(?:i am|i'm|im|age|aged)\s*{_FIGURE}(?!\w)(?!\s*(?:{_NOT_AN_AGE}))"),
    re.compile(rf"{_FIGURE}\s*(?:years? old|yo|y/o)\b"),
)
_WEIGHT_KG = re.compile(rf"{_FIGURE}\s*(?:kg|kgs|kilos?|kilograms?)\b")
_WEIGHT_LB = re.compile(rf"{_FIGURE}\s*(?:lb|lbs|pounds?)\b")
_HEIGHT_CM = re.compile(rf"{_FIGURE}\s*(?:cm|centimet(?:er|re)s?)\b")
# "I weigh 80 kg", "my height is 180 cm", "I am 30": a figure said of oneself, which is saved
# even as the message's one profile fact.
_OF_ONESELF = re.compile(
    rf"\b(?:i weigh|i am|i'm|im|my (?:weight|height|age)(?: is)?)\s+(?:about\s+|around\s+)?"
    rf"{_FIGURE}(?!\s*(?:{_NOT_A_PROFILE_FIGURE}))"
)
_OF_ONESELF_BEFORE = re.compile(
    r"\b(?:i weigh|i am|i'm|im|my (?:weight|height)(?: is)?)\s+(?:about\s+|around\s+)?$"
)
_HEIGHT_M = re.compile(rf"(?P<minus>(?<![\w.,])[{_MINUS}])?\b(?P<figure>\d\.\d{{1,2}})\s*m\b")
# "lose 5 kg" is a goal, not a weight.
_CHANGE = re.compile(
    r"\b(?:lose|lost|losing|gain|gained|gaining|drop|dropped|shed|put on|cut|down|up)\s+"
    r"(?:about\s+|around\s+|another\s+|an extra\s+)?$"
)
_SEX = re.compile(r"\b(male|female|man|woman)\b")
_ACTIVITY = (
    ("very_active", re.compile(r"\bvery active|extremely active|athlete\b")),
    ("active", re.compile(r"\b(?<!moderately )(?<!lightly )(?<!not )active\b")),
    ("moderate", re.compile(r"\bmoderate(?:ly)?(?: active)?\b")),
    ("light", re.compile(r"\blight(?:ly)? active|lightly\b")),
    ("sedentary", re.compile(r"\bsedentary|desk job|not active|inactive\b")),
)
_GOAL = (
    ("lose", re.compile(r"\b(?:lose|losing|cut|cutting|fat loss|weight loss|slim)\b")),
    ("gain", re.compile(r"\b(?:gain|bulk|bulking|build muscle|muscle gain|mass)\b")),
    ("maintain", re.compile(r"\b(?:maintain|maintenance)\b")),
)

SEXES = {"male": "male", "man": "male", "female": "female", "woman": "female"}
_NOTHING_SAVED = "Nothing was saved"
_PROFILE_EXAMPLE = "I am 30, 80 kg, 180 cm"


def _figure(match: re.Match[str], what: str) -> float:
    """The figure a profile pattern matched, as a plain positive number."""
    written = match.group(0).strip()
    figure = match.group("figure")
    if match.group("minus"):
        raise NotUnderstood(written, f"{what} cannot be negative", _PROFILE_EXAMPLE, _NOTHING_SAVED)
    if not _PLAIN_FIGURE.fullmatch(figure):
        raise NotUnderstood(
            written,
            f"write {what} in plain digits, like 80 or 80.5",
            _PROFILE_EXAMPLE,
            _NOTHING_SAVED,
        )
    return float(figure.replace(",", "."))


def _stated(pattern: re.Pattern[str], text: str) -> list[re.Match[str]]:
    """The matches that state a figure rather than a change of it ('lose 5 kg')."""
    return [m for m in pattern.finditer(text) if not _CHANGE.search(text, 0, m.start())]


def _in_range(written: str, what: str, value: float, limits: Limits) -> float:
    low, high = limits.low, limits.high
    inside = (low <= value if limits.low_included else low < value) and value <= high
    if not inside:
        bounds = f"from {low:g} to" if limits.low_included else f"more than {low:g} and at most"
        raise NotUnderstood(
            written,
            f"{what} must be {bounds} {high:g} {limits.unit}",
            _PROFILE_EXAMPLE,
            _NOTHING_SAVED,
        )
    return value


def _age(text: str) -> int | None:
    match = next((m for p in _AGE if (m := p.search(text))), None)
    if match is None:
        return None
    written = match.group(0).strip()
    value = _figure(match, "an age")
    if not value.is_integer():
        raise NotUnderstood(written, "an age is a whole number of years", "I am 30", _NOTHING_SAVED)
    return int(_in_range(written, "an age", value, AGE_LIMITS))


def _measurement(
    text: str,
    what: str,
    written_in_unit: re.Pattern[str],
    written_otherwise: re.Pattern[str],
    factor: float,
    limits: Limits,
) -> float | None:
    """The figure written in the unit of ``limits``, else in the other unit (converted by
    ``factor`` and rounded to 0.1), checked against ``limits``; a message that states two
    different ones is refused: saving the first would drop the other unsaid."""
    stated = [(m, 1.0) for m in _stated(written_in_unit, text)]
    stated += [(m, factor) for m in _stated(written_otherwise, text)]
    if not stated:
        return None
    match, value = stated[0][0], round(_figure(stated[0][0], what) * stated[0][1], 1)
    for other, times in stated[1:]:
        # Another figure said of oneself ("... and I weigh 90 kg"), not the same one again in
        # the other unit or rounded; "squat 100 kg" or "a goal of 72 kg" is of something else.
        if not _OF_ONESELF_BEFORE.search(text, 0, other.start()):
            continue
        with contextlib.suppress(NotUnderstood):
            if abs(round(_figure(other, what) * times, 1) - value) <= 1.0:
                continue
        figures = f"{match.group(0).strip()}, {other.group(0).strip()}"
        raise NotUnderstood(
            other.group(0).strip(),
            f"one {what[2:]} per message, and this one has two ({figures})",
            _PROFILE_EXAMPLE,
            _NOTHING_SAVED,
        )
    return _in_range(match.group(0).strip(), what, value, limits)


def _weight_kg(text: str) -> float | None:
    return _measurement(text, "a weight", _WEIGHT_KG, _WEIGHT_LB, 0.45359237, WEIGHT_LIMITS)


def _height_cm(text: str) -> float | None:
    return _measurement(text, "a height", _HEIGHT_CM, _HEIGHT_M, 100, HEIGHT_LIMITS)


def parse_profile_facts(message: str) -> dict[str, Any]:
    """The profile fields a message states about the person, to be saved: two or more, as in
    'I am 30, 80 kg, 180 cm, male', or one figure said of oneself, as in 'I weigh 80 kg'.

    Raises NotUnderstood when a stated age cannot be taken as written, or a weight or height
    in a message that states another profile fact or says the figure of oneself.
    """
    text = message.lower()
    facts: dict[str, Any] = {}
    refused: dict[str, NotUnderstood] = {}
    # The router reads every message: most state no figure, and need not try each reader.
    readers = (("age", _age), ("weight_kg", _weight_kg), ("height_cm", _height_cm))
    for name, read in readers if _ANY_DIGIT.search(text) else ():
        try:
            value = read(text)
        except NotUnderstood as exc:
            refused[name] = exc
            continue
        if value is not None:
            facts[name] = value
    if match := _SEX.search(text):
        facts["sex"] = SEXES[match.group(1)]
    for level, pattern in _ACTIVITY:
        if pattern.search(text):
            facts["activity"] = level
            break
    for goal, pattern in _GOAL:
        if pattern.search(text):
            facts["goal"] = goal
            break
    # "I am 999" can only be an age; "bought 10 kg of rice" is not a weight unless the
    # message also says something else about the person, or says it of the person.
    if "age" in refused:
        raise refused["age"]
    about_the_person = len(facts) + len(refused) >= 2 or bool(
        (facts or refused) and _OF_ONESELF.search(text)
    )
    if refused and about_the_person:
        raise next(iter(refused.values()))
    return facts if about_the_person else {}


# --- money ---------------------------------------------------------------------------------

_AMOUNT = r"(?>\d[\d.,]*\d|\d)(?:e[-+]?\d+)?|nan|inf(?:inity)?"
# What sticks to an amount's digits is part of what was written: a letter of any script, an
# underscore ($1_000), a combining mark (a struck-through digit); so is a thousands group
# after a space ($1 000, not "$20 2 days ago"). Each ended the amount unsaid: $1.00 recorded.
_TAIL = r"[\w\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]*"
_MONEY = re.compile(
    rf"(?P<before>(?<!\w)[{_MINUS}])?[$€£]\s?(?P<after>[{_MINUS}])?(?P<amount>{_AMOUNT})"
    rf"(?P<tail>{_TAIL})(?P<spaced>[ \u00a0\u202f]\d{{3}}(?!\d))?"
    rf"|(?P<minus>(?<![\w.,{_MINUS}])[{_MINUS}])?(?<![\w.,])(?P<worded>{_AMOUNT})\s?"
    r"(?:dollars|usd|eur|euros?|bucks)\b"
)
_PLAIN = re.compile(
    rf"(?P<minus>(?<![\w.,{_MINUS}])[{_MINUS}])?(?<![\w.,])(?P<amount>{_AMOUNT})(?!\w)"
)
_SIGN_THEN_POINT = re.compile(r"[$€£]\s?[.,]\d")
_WHOLE = re.compile(r"\d+")
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL = re.compile(r"\d+[.,]\d+")
_NOTHING_RECORDED = "Nothing was recorded"
_MONEY_EXAMPLE = "spent $25.50 on groceries"


def _cents(written: str, amount: str, negative: bool) -> int:
    def refuse(problem: str) -> NotUnderstood:
        return NotUnderstood(written, problem, _MONEY_EXAMPLE, _NOTHING_RECORDED)

    if negative:
        raise refuse("an amount cannot be negative")
    if amount in ("nan", "inf", "infinity"):
        raise refuse("that is not an amount of money")
    if "e" in amount:
        raise refuse("write amounts in plain digits, without an exponent")
    if _WHOLE.fullmatch(amount) or _THOUSANDS.fullmatch(amount):
        value = Decimal(amount.replace(",", ""))
    elif _DECIMAL.fullmatch(amount):
        value = Decimal(amount.replace(",", "."))  # "12,5" is twelve and a half
    else:
        raise refuse("write amounts like 1200, 1,200 or 1,200.50")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2:
        raise refuse("an amount has at most two decimals (cents)")
    if value == 0:
        raise refuse("an amount must be above zero")
    if value * 100 > MAX_AMOUNT_CENTS:
        raise refuse(f"one amount can be at most {format_cents(MAX_AMOUNT_CENTS)}")
    return int(value * 100)


def _money_cents(match: re.Match[str]) -> int:
    written = match.group(0).strip()
    if match.group("worded"):
        return _cents(written, match.group("worded"), bool(match.group("minus")))
    if match.group("tail"):
        raise NotUnderstood(
            written,
            "write the amount in digits only (1200, not 1.2k)",
            _MONEY_EXAMPLE,
            _NOTHING_RECORDED,
        )
    if match.group("spaced") and re.fullmatch(r"\d{1,3}", match.group("amount")):
        raise NotUnderstood(
            written,
            "write the amount without spaces (1000 or 1,000)",
            _MONEY_EXAMPLE,
            _NOTHING_RECORDED,
        )
    negative = bool(match.group("before") or match.group("after"))
    return _cents(written, match.group("amount"), negative)


def parse_money_cents(message: str) -> int | None:
    """The first amount of money in a message, in cents; bare numbers count as a last resort.

    Raises NotUnderstood when any amount of money in it cannot be taken as written (see the
    module), or when it has more than one: recording $25 of "spent $25 on groceries and $30
    on rent" would drop the rest unsaid.
    """
    text = message.lower()
    if point := _SIGN_THEN_POINT.search(text):
        raise NotUnderstood(
            point.group(0) + "...",
            "write a digit before the point (0.50, not .50)",
            _MONEY_EXAMPLE,
            _NOTHING_RECORDED,
        )
    matches = list(_MONEY.finditer(text))
    if amounts := [_money_cents(match) for match in matches]:
        if len(amounts) > 1:
            # Recording the first would drop the others unsaid.
            raise NotUnderstood(
                matches[1].group(0).strip(),
                f"one amount per message, and this one has {len(amounts)} "
                f"({', '.join(format_cents(cents) for cents in amounts)}); send each on its own",
                _MONEY_EXAMPLE,
                _NOTHING_RECORDED,
            )
        return amounts[0]
    if match := _PLAIN.search(text):
        return _cents(match.group(0), match.group("amount"), bool(match.group("minus")))
    return None


def format_cents(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}${abs(cents) / 100:,.2f}"
