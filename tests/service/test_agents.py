from __future__ import annotations

import pytest

from service.agents.base import Agent, AgentReply, AgentRequest, checked_reply
from service.agents.budget import BudgetAgent
from service.agents.failure_kinds import BadResponse
from service.agents.nutrition import NutritionAgent, daily_target, plan_meals
from service.agents.router import RouterAgent
from service.agents.workout import WorkoutAgent
from service.errors import UserInputError
from service.stores import Stores
from service.stores.base import Profile
from service.stores.unit_of_work import Unit
from service.stores.writes import AddExpense, UpdateProfile
from tests.store_writes import upsert_profile


@pytest.fixture
def stores(sqlite_stores: Stores) -> Stores:
    return sqlite_stores


async def answered(stores: Stores, agent: Agent, request: AgentRequest) -> AgentReply:
    """The agent's reply, with the writes it asked for committed as the chat service does."""
    reply = await agent.handle(request)
    await stores.units.commit(Unit(writes=reply.writes))
    return reply


def test_mifflin_st_jeor_matches_the_published_formula() -> None:
    profile = Profile("u", age=30, weight_kg=80, height_cm=180, sex="male", activity="moderate")
    target = daily_target(profile)
    # 10*80 + 6.25*180 - 5*30 + 5 = 1780; x1.55 = 2759
    assert target.bmr == 1780
    assert target.kcal == 2759
    assert target.protein_g == 128
    assert abs(target.protein_g * 4 + target.fat_g * 9 + target.carbs_g * 4 - target.kcal) < 15
    female = Profile(
        "u", age=30, weight_kg=60, height_cm=165, sex="female", activity="light", goal="lose"
    )
    # 600 + 1031.25 - 150 - 161 = 1320.25; x1.375 - 500 = 1315.3
    assert daily_target(female).kcal == 1315


def test_meal_plan_adds_up_to_about_the_target() -> None:
    plan = plan_meals(2400)
    total = sum(food.kcal * portion for _, food, portion in plan)
    assert [meal for meal, _, _ in plan] == ["breakfast", "lunch", "dinner", "snack"]
    assert abs(total - 2400) / 2400 < 0.15


async def test_nutrition_asks_for_missing_profile_fields(stores: Stores) -> None:
    agent = NutritionAgent(stores.profiles)
    reply = await agent.handle(AgentRequest("plan my meals", "new-user"))
    assert "your age" in reply.content and "your weight" in reply.content
    assert reply.data["missing"] == ["age", "weight_kg", "height_cm", "sex", "activity"]


async def test_nutrition_plans_from_the_stored_profile(stores: Stores) -> None:
    await upsert_profile(
        stores, "u1", age=30, weight_kg=80.0, height_cm=180.0, sex="male", activity="moderate"
    )
    reply = await NutritionAgent(stores.profiles).handle(AgentRequest("plan my meals", "u1"))
    assert "2759 kcal" in reply.content
    assert "breakfast" in reply.content and "dinner" in reply.content


@pytest.mark.parametrize(
    "message,days,equipment,goal",
    [
        ("beginner workout at home", 3, "bodyweight", "general"),
        ("advanced strength plan with barbell", 5, "barbell", "strength"),
        ("intermediate muscle plan with dumbbells", 4, "dumbbells", "muscle"),
    ],
)
async def test_workout_plan_by_goal_level_and_equipment(
    stores: Stores, message: str, days: int, equipment: str, goal: str
) -> None:
    reply = await WorkoutAgent(stores.profiles).handle(AgentRequest(message, "u1"))
    assert reply.data == {
        "goal": goal,
        "level": reply.data["level"],
        "equipment": equipment,
        "days": days,
    }
    assert reply.content.count("\n- ") == days


async def test_workout_remembers_level_and_equipment(stores: Stores) -> None:
    agent = WorkoutAgent(stores.profiles)
    await answered(stores, agent, AgentRequest("intermediate plan with dumbbells", "u1"))
    reply = await answered(stores, agent, AgentRequest("make me a workout plan", "u1"))
    assert reply.data["level"] == "intermediate"
    assert reply.data["equipment"] == "dumbbells"


async def test_budget_set_spend_and_report(stores: Stores) -> None:
    agent = BudgetAgent(stores.budgets)
    reply = await answered(stores, agent, AgentRequest("set my food budget to $400", "u1"))
    assert "Set your monthly food budget to $400.00" in reply.content
    reply = await answered(stores, agent, AgentRequest("I spent $25.50 on groceries", "u1"))
    assert "Recorded $25.50 for food" in reply.content
    assert "$374.50 left" in reply.content
    reply = await answered(stores, agent, AgentRequest("how much is left in my budget", "u1"))
    assert reply.data["categories"]["food"] == {"limitCents": 40000, "spentCents": 2550}


async def test_budget_agent_asks_for_its_expense_and_writes_nothing_itself(
    stores: Stores,
) -> None:
    # A guard that runs the agent again after a failed attempt must not record it twice:
    # the agent returns the write, the chat service commits it once with the turn.
    agent = BudgetAgent(stores.budgets)
    for _ in range(2):
        reply = await agent.handle(AgentRequest("spent $5 on groceries", "u1"))
    assert reply.writes == (AddExpense("u1", "food", 500, "spent $5 on groceries"),)
    assert "spent $5.00 (no budget)" in reply.content
    assert await stores.budgets.report("u1") == []


async def test_budget_rejects_absurd_amounts(stores: Stores) -> None:
    with pytest.raises(UserInputError, match=r"at most \$1,000,000\.00"):
        await BudgetAgent(stores.budgets).handle(AgentRequest("spent $999999999999 on shoes", "u1"))


async def test_budget_asks_for_a_category(stores: Stores) -> None:
    reply = await BudgetAgent(stores.budgets).handle(AgentRequest("set a budget of $300", "u1"))
    assert "Which category" in reply.content


async def test_router_saves_profile_facts_and_confirms(stores: Stores) -> None:
    router = RouterAgent({})
    reply = await answered(
        stores, router, AgentRequest("I am 30, 80 kg, 180 cm, male, moderately active", "u1")
    )
    assert reply.content.startswith(
        "Saved your profile: age 30, weight 80 kg, height 180 cm, sex male, activity moderate."
    )
    profile = await stores.profiles.get("u1")
    assert profile is not None and profile.missing_for_energy() == []


async def test_router_saves_one_figure_said_of_oneself(stores: Stores) -> None:
    router = RouterAgent({})
    reply = await answered(stores, router, AgentRequest("I weigh 80 kg", "u1"))
    assert "Saved your profile: weight 80 kg." in reply.content
    profile = await stores.profiles.get("u1")
    assert profile is not None and profile.weight_kg == 80.0
    # A weight that is not said of the person is not theirs.
    await answered(stores, router, AgentRequest("bought 30 kg of rice", "u2"))
    assert await stores.profiles.get("u2") is None


async def test_router_hands_off_to_the_chosen_agent(stores: Stores) -> None:
    agents = {"nutrition": NutritionAgent(stores.profiles), "budget": BudgetAgent(stores.budgets)}
    router = RouterAgent(agents)
    reply = await router.handle(AgentRequest("plan my meals", "u1"))
    assert reply.agent == "nutrition"
    assert 0 < reply.confidence <= 1
    general = await router.handle(AgentRequest("hello", "u1"))
    assert general.agent == "router" and "meal plans" in general.content


async def test_router_facts_reach_the_chosen_agent_before_they_are_stored(
    stores: Stores,
) -> None:
    router = RouterAgent({"nutrition": NutritionAgent(stores.profiles)})
    reply = await router.handle(
        AgentRequest("I am 30, 80 kg, 180 cm, male, moderately active: plan my meals", "u1")
    )
    assert reply.agent == "nutrition" and "2759 kcal" in reply.content
    assert await stores.profiles.get("u1") is None
    assert [type(write) for write in reply.writes] == [UpdateProfile]


@pytest.mark.parametrize(
    ("confidence", "said"),
    [
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (-float("inf"), "-inf"),
        (1e305, "1e+305"),
        (85, "85"),
        (10**400, "an integer past any float"),
    ],
)
def test_a_confidence_out_of_range_is_named_as_it_was_returned(
    confidence: float, said: str
) -> None:
    """The message is the incident's and the breaker's last error: a NaN or an infinity was
    said to be "an integer past any float", which sends the agent's author after an integer
    the agent never returned."""
    with pytest.raises(BadResponse) as refused:
        checked_reply("coach", AgentReply("sure", "coach", confidence=confidence))
    assert str(refused.value) == (
        f"agent 'coach' returned a confidence of {said}; it must be a number from 0 to 1"
    )


@pytest.mark.parametrize(
    ("writes", "said"),
    [
        (("not a write",), "writes holding a str"),
        ((AddExpense("u1", "food", 2500), {"amount": 25}), "writes holding a dict"),
        (AddExpense("u1", "food", 2500), "writes as an AddExpense"),
        (None, "writes as a NoneType"),
    ],
)
def test_writes_of_another_shape_are_a_bad_response(writes: object, said: str) -> None:
    """The chat commits an agent's writes after its guard passed the reply: a write that is
    no write, or one not in a tuple, failed the turn there with a 500, past the fallbacks."""
    with pytest.raises(BadResponse) as refused:
        checked_reply("coach", AgentReply("sure", "coach", writes=writes))  # type: ignore[arg-type]
    assert str(refused.value) == (
        f"agent 'coach' returned {said}; writes is a tuple of AddExpense, SetBudgetLimit or "
        "UpdateProfile (service.stores.writes)"
    )
    write = AddExpense("u1", "food", 2500)
    for fine in ((write,), [write]):
        assert checked_reply("coach", AgentReply("ok", "coach", writes=fine)).writes == fine  # type: ignore[arg-type]
