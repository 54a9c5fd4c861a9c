from __future__ import annotations

import pytest

from service.agents.parsing import format_cents, parse_money_cents, parse_profile_facts


def test_profile_sentence_from_the_product_brief() -> None:
    facts = parse_profile_facts("I am 30, 80 kg, 180 cm, male, moderately active")
    assert facts == {
        "age": 30,
        "weight_kg": 80.0,
        "height_cm": 180.0,
        "sex": "male",
        "activity": "moderate",
    }


@pytest.mark.parametrize(
    "text,expected",
    [
        (
            "I'm 45 years old, 150 lbs, 1.65 m, female, sedentary",
            {
                "age": 45,
                "weight_kg": 68.0,
                "height_cm": 165.0,
                "sex": "female",
                "activity": "sedentary",
            },
        ),
        (
            "woman, very active, 62kg and I want to lose weight",
            {
                "weight_kg": 62.0,
                "sex": "female",
                "activity": "very_active",
                "goal": "lose",
            },
        ),
        ("I am not active", {"activity": "sedentary"}),
        ("plan my meals", {}),
    ],
)
def test_profile_facts(text: str, expected: dict[str, object]) -> None:
    assert parse_profile_facts(text) == expected


@pytest.mark.parametrize(
    "text,cents",
    [
        ("spent $25 on groceries", 2500),
        ("set my food budget to $400.50", 40050),
        ("I paid 1200 dollars rent", 120000),
        ("€ 12,5 for lunch", 1250),
        ("budget 300 for fun", 30000),
        ("how much is left", None),
    ],
)
def test_money(text: str, cents: int | None) -> None:
    assert parse_money_cents(text) == cents


def test_format_cents() -> None:
    assert format_cents(123456) == "$1,234.56"
    assert format_cents(-50) == "-$0.50"
