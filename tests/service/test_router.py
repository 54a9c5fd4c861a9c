"""The router's routing table: labelled messages and the accuracy it reaches."""

from __future__ import annotations

import pytest

from service.agents.router import route

LABELLED = [
    ("plan my meals", "nutrition"),
    ("how many calories should I eat a day?", "nutrition"),
    ("what should I have for breakfast", "nutrition"),
    ("give me my macros", "nutrition"),
    ("I want a high protein diet", "nutrition"),
    ("suggest a vegetarian dinner", "nutrition"),
    ("what are good snacks for weight loss eating", "nutrition"),
    ("help me with nutrition for a marathon diet", "nutrition"),
    ("how much fat and carbs should I eat", "nutrition"),
    ("meal plan for the week please", "nutrition"),
    ("make me a workout plan", "workout"),
    ("I want to get stronger at the gym", "workout"),
    ("beginner exercises with dumbbells", "workout"),
    ("how many sets and reps for squats", "workout"),
    ("a training routine for muscle", "workout"),
    ("cardio plan for running", "workout"),
    ("home workout with no equipment", "workout"),
    ("I want to bench press more", "workout"),
    ("weekly plan for fitness with kettlebells", "workout"),
    ("core exercises for abs", "workout"),
    ("set my food budget to $400", "budget"),
    ("I spent $25 on groceries", "budget"),
    ("how much money do I have left this month", "budget"),
    ("show my expenses", "budget"),
    ("can I afford a new phone", "budget"),
    ("budget report", "budget"),
    ("I paid 1200 dollars rent", "budget"),
    ("help me save money", "budget"),
    ("track my spending on entertainment", "budget"),
    ("how are my finances", "budget"),
    ("hello there", None),
    ("what's the weather like", None),
    ("tell me a joke", None),
]


def test_router_accuracy_on_labelled_messages() -> None:
    hits = sum(route(message).agent == label for message, label in LABELLED)
    accuracy = hits / len(LABELLED)
    print(f"router accuracy: {hits}/{len(LABELLED)} = {accuracy:.1%}")
    assert len(LABELLED) >= 30
    assert accuracy >= 0.9, [
        (m, label, route(m).agent) for m, label in LABELLED if route(m).agent != label
    ]


@pytest.mark.parametrize("message,label", LABELLED)
def test_confidence_is_a_probability(message: str, label: str | None) -> None:
    decision = route(message)
    assert 0.0 <= decision.confidence <= 1.0


def test_clear_messages_get_more_confidence_than_mixed_ones() -> None:
    clear = route("plan my meals and calories for my diet")
    mixed = route("meals and a workout and a budget")
    assert clear.agent == "nutrition"
    assert clear.confidence > mixed.confidence


def test_unmatched_message_routes_to_no_agent_with_low_confidence() -> None:
    decision = route("hello there")
    assert decision.agent is None
    assert decision.confidence < 0.5
