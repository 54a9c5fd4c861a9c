from __future__ import annotations

import re

import pytest

from service.agents.parsing import (
    MAX_AMOUNT_CENTS,
    NotUnderstood,
    format_cents,
    parse_money_cents,
    parse_profile_facts,
)


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
        ("I am not active, male", {"activity": "sedentary", "sex": "male"}),
        # One fact alone is saved when it is a figure said of oneself.
        ("I weigh 80 kg", {"weight_kg": 80.0}),
        ("my height is 180 cm", {"height_cm": 180.0}),
        ("I am 30", {"age": 30}),
        ("I'm about 176 lbs", {"weight_kg": 79.8}),
        ("I am not active", {}),
        ("carry 25 kg for 10 reps", {}),
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


@pytest.mark.parametrize(
    "text,cents",
    [
        ("spent $1,200 on rent", 120_000),
        ("spent $12,345.67 on a car", 1_234_567),
        ("I paid 1,200 dollars rent", 120_000),
        ("spent $1,000,000 on a house", 100_000_000),
        ("€ 12,50 for lunch", 1_250),
        ("spent $25. on lunch", 2_500),
        ("spent 20-30 on food", 2_000),
        ("spent $ 25 on lunch", 2_500),
        ("spent 25 on the 5th", 2_500),
        # A number after an amount that is no thousands group is not part of it.
        ("spent $20 2 days ago on food", 2_000),
        ("spent $5 3 times on coffee", 500),
        ("spent \u20ac20 2x on lunch", 2_000),
    ],
)
def test_money_as_meant(text: str, cents: int) -> None:
    assert parse_money_cents(text) == cents


@pytest.mark.parametrize(
    "text,reason",
    [
        ("set my food budget to $-400", "cannot be negative"),
        ("spent -$25", "cannot be negative"),
        ("spent \u2212$25", "cannot be negative"),
        ("spent -25 on food", "cannot be negative"),
        ("spent $1e308", "without an exponent"),
        ("spent $1.5E3", "without an exponent"),
        ("spent nan on food", "not an amount"),
        ("spent $inf", "not an amount"),
        ("spent $25.999", "at most two decimals"),
        ("spent $1,200.505", "at most two decimals"),
        ("spent $0.001", "at most two decimals"),
        ("spent $0.00", "above zero"),
        ("spent $1,000,000.01", "at most $1,000,000.00"),
        ("spent $" + "9" * 4000, "at most $1,000,000.00"),
        ("spent $25k", "digits only"),
        # Each was recorded as $1.00 or $2.00: what followed the first digits ended the amount.
        ("spent $1_000 on food", "'$1_000': write the amount in digits only"),
        ("spent $2\u0335\u00335 on food", "digits only"),
        ("spent $1\u00e9 on food", "digits only"),
        ("spent $1 000 on rent", "'$1 000': write the amount without spaces (1000 or 1,000)"),
        ("spent $1 000.50 on rent", "without spaces"),
        ("spent \u20ac1\u202f000 on rent", "without spaces"),
        ("spent $1,2,3", "write amounts like"),
        ("spent $1,2000", "at most two decimals"),
        # Any amount of money in the message, not only the first one.
        ("spent $25 on food and $-5 on gas", "cannot be negative"),
        ("spent $25 on food and 1e308 dollars on gas", "without an exponent"),
        # Recording one of two would drop the other unsaid.
        (
            "spent $25 on groceries and $30 on rent",
            "'$30': one amount per message, and this one has 2 ($25.00, $30.00)",
        ),
        ("spent 25 dollars and 5 dollars", "one amount per message"),
        ("spent $.5 on food", "'$.5...': write a digit before the point (0.50, not .50)"),
        ("spent € ,50 on food", "write a digit before the point"),
    ],
)
def test_money_not_taken_as_written(text: str, reason: str) -> None:
    with pytest.raises(NotUnderstood, match=re.escape(reason)) as caught:
        parse_money_cents(text)
    assert "Nothing was recorded" in str(caught.value)
    assert len(str(caught.value)) < 300  # a 4000-digit amount is not echoed whole


def test_the_cap_is_one_million() -> None:
    assert MAX_AMOUNT_CENTS == 100_000_000
    assert parse_money_cents("spent $1,000,000.00") == MAX_AMOUNT_CENTS


@pytest.mark.parametrize(
    "text,reason",
    [
        ("I am 30, -80 kg, male", "a weight cannot be negative"),
        ("I am -30", "an age cannot be negative"),
        ("I am 999, 80 kg", "an age must be from 10 to 110 years"),
        ("I am 9", "an age must be from 10 to 110 years"),
        ("I am 111 years old", "an age must be from 10 to 110 years"),
        ("I am 30.5", "an age is a whole number"),
        ("male, 20 kg", "a weight must be more than 20 and at most 400 kg"),
        ("male, 400.5 kg", "a weight must be more than 20 and at most 400 kg"),
        ("female, 80 cm", "a height must be more than 80 and at most 260 cm"),
        ("female, 0.80 m", "a height must be more than 80 and at most 260 cm"),
        ("I am 30, 1e2 kg", "plain digits"),
        ("I am 30, 1,200.5 kg", "plain digits"),
        # Said of oneself, a lone figure is refused rather than passed over.
        ("my weight is -80 kg", "a weight cannot be negative"),
        ("I weigh 900 kg", "a weight must be more than 20 and at most 400 kg"),
        # Two figures of one kind: the first was saved, the other dropped unsaid.
        (
            "I am 30, 80 kg, 180 cm, male and I weigh 90 kg",
            "'90 kg': one weight per message, and this one has two (80 kg, 90 kg)",
        ),
        ("I am 30, 180 cm and my height is 190 cm", "one height per message"),
    ],
)
def test_profile_figures_not_taken_as_written(text: str, reason: str) -> None:
    with pytest.raises(NotUnderstood, match=re.escape(reason)) as caught:
        parse_profile_facts(text)
    assert "Nothing was saved" in str(caught.value)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("I am 10, 20.5 kg, 80.5 cm", {"age": 10, "weight_kg": 20.5, "height_cm": 80.5}),
        ("I am 110, 400 kg, 260 cm", {"age": 110, "weight_kg": 400.0, "height_cm": 260.0}),
        ("I am 30, 80,5 kg", {"age": 30, "weight_kg": 80.5}),
        # A change of weight is a goal, and a lone weight is not a statement about oneself.
        ("I'm 30 and want to lose 5 kg", {"age": 30, "goal": "lose"}),
        ("bought 10 kg of rice for $20", {}),
        # Numbers that are not an age after "I am".
        ("I am 2 weeks into training", {}),
        ("im 40 minutes from the gym", {}),
        ("I am 80 kg", {"weight_kg": 80.0}),
        # The same figure in the other unit, rounded.
        ("I weigh 80 kg (176 lbs)", {"weight_kg": 80.0}),
        ("I am 30, 180 cm (1.80 m)", {"age": 30, "height_cm": 180.0}),
        # Another figure of something else than the person.
        (
            "I am 30, 80 kg, 180 cm, goal weight 72 kg",
            {"age": 30, "weight_kg": 80.0, "height_cm": 180.0},
        ),
        ("I am 30, 80 kg and I squat 100 kg", {"age": 30, "weight_kg": 80.0}),
        ("I am 30, 80 kg; I want to reach 75 kg", {"age": 30, "weight_kg": 80.0}),
        ("I am 30, 80 kg, I carry a -5 kg vest", {"age": 30, "weight_kg": 80.0}),
    ],
)
def test_profile_figures_at_the_edges(text: str, expected: dict[str, object]) -> None:
    assert parse_profile_facts(text) == expected
