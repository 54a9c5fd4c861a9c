"""Reading facts out of plain chat messages: profile details and money amounts."""

from __future__ import annotations

import re
from typing import Any

_AGE = re.compile(
    r"\b(?:i am|i'm|im|age|aged)\s*(\d{1,3})\b(?!\s*(?:kg|kilo|cm|lb))"
    r"|\b(\d{1,3})\s*(?:years? old|yo|y/o)\b"
)
_WEIGHT_KG = re.compile(r"\b(\d{2,3}(?:\.\d+)?)\s*(?:kg|kgs|kilos?|kilograms?)\b")
_WEIGHT_LB = re.compile(r"\b(\d{2,3}(?:\.\d+)?)\s*(?:lb|lbs|pounds?)\b")
_HEIGHT_CM = re.compile(r"\b(\d{3}(?:\.\d+)?)\s*(?:cm|centimet(?:er|re)s?)\b")
_HEIGHT_M = re.compile(r"\b([12]\.\d{1,2})\s*m\b")
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
_MONEY = re.compile(
    r"(?:[$€£]\s?(\d+(?:[.,]\d{1,2})?)|\b(\d+(?:[.,]\d{1,2})?)\s?(?:dollars|usd|eur|euros?|bucks)\b)"
)
_PLAIN_NUMBER = re.compile(r"\b(\d+(?:\.\d{1,2})?)\b")

SEXES = {"male": "male", "man": "male", "female": "female", "woman": "female"}


def parse_profile_facts(message: str) -> dict[str, Any]:
    """The profile fields a message states, e.g. 'I am 30, 80 kg, 180 cm, male'."""
    text = message.lower()
    facts: dict[str, Any] = {}
    if match := _AGE.search(text):
        age = int(match.group(1) or match.group(2))
        if 10 <= age <= 110:
            facts["age"] = age
    if match := _WEIGHT_KG.search(text):
        facts["weight_kg"] = float(match.group(1))
    elif match := _WEIGHT_LB.search(text):
        facts["weight_kg"] = round(float(match.group(1)) * 0.45359237, 1)
    if match := _HEIGHT_CM.search(text):
        facts["height_cm"] = float(match.group(1))
    elif match := _HEIGHT_M.search(text):
        facts["height_cm"] = round(float(match.group(1)) * 100, 1)
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
    return facts


def parse_money_cents(message: str) -> int | None:
    """The first amount of money in a message, in cents; bare numbers count as a last resort."""
    text = message.lower()
    match = _MONEY.search(text) or _PLAIN_NUMBER.search(text)
    if match is None:
        return None
    raw = next(group for group in match.groups() if group)
    return round(float(raw.replace(",", ".")) * 100)


def format_cents(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}${abs(cents) / 100:,.2f}"
