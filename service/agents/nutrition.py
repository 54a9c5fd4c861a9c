"""The nutrition agent (the seed's NPA): daily energy and macros, and meals to match.

Energy is Mifflin-St Jeor's resting rate times an activity factor, adjusted for the goal.
Meals come from a small built-in food table, picked to fit each meal's share of the day.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.agents.base import AgentReply, AgentRequest
from service.stores.base import Profile, ProfileBackend
from service.stores.writes import profile_with

if TYPE_CHECKING:
    from service.stores import Stores

ACTIVITY_FACTORS = {
    "sedentary": 1.2,
    "light": 1.375,
    "moderate": 1.55,
    "active": 1.725,
    "very_active": 1.9,
}
GOAL_ADJUSTMENT_KCAL = {"lose": -500, "maintain": 0, "gain": 300}
PROTEIN_G_PER_KG = {"lose": 2.0, "maintain": 1.6, "gain": 1.8}
FAT_SHARE = 0.25
MEAL_SHARES = (("breakfast", 0.25), ("lunch", 0.35), ("dinner", 0.30), ("snack", 0.10))

FIELD_QUESTIONS = {
    "age": "your age",
    "weight_kg": "your weight (kg)",
    "height_cm": "your height (cm)",
    "sex": "your sex (male/female)",
    "activity": "how active you are (sedentary, lightly, moderately, active, very active)",
}


@dataclass(frozen=True, slots=True)
class Food:
    name: str
    meal: str
    kcal: int
    protein_g: int


FOODS = (
    Food("oatmeal with berries and Greek yogurt", "breakfast", 420, 24),
    Food("scrambled eggs on wholegrain toast", "breakfast", 480, 28),
    Food("banana-peanut butter smoothie", "breakfast", 550, 22),
    Food("cottage cheese with fruit", "breakfast", 300, 25),
    Food("chicken, rice and vegetable bowl", "lunch", 650, 45),
    Food("lentil soup with bread", "lunch", 520, 26),
    Food("tuna salad wrap", "lunch", 480, 35),
    Food("quinoa salad with chickpeas and feta", "lunch", 600, 24),
    Food("salmon, potatoes and broccoli", "dinner", 700, 42),
    Food("turkey chili with beans", "dinner", 580, 44),
    Food("tofu stir-fry with noodles", "dinner", 620, 30),
    Food("lean beef, sweet potato and greens", "dinner", 750, 48),
    Food("apple and almonds", "snack", 250, 7),
    Food("protein yogurt", "snack", 150, 18),
    Food("hummus and carrots", "snack", 200, 6),
    Food("rice cakes with peanut butter", "snack", 280, 9),
)


@dataclass(frozen=True, slots=True)
class DailyTarget:
    kcal: int
    protein_g: int
    fat_g: int
    carbs_g: int
    bmr: int


def mifflin_st_jeor(profile: Profile) -> float:
    assert profile.weight_kg and profile.height_cm and profile.age and profile.sex
    base = 10 * profile.weight_kg + 6.25 * profile.height_cm - 5 * profile.age
    return base + (5 if profile.sex == "male" else -161)


def daily_target(profile: Profile) -> DailyTarget:
    goal = profile.goal or "maintain"
    bmr = mifflin_st_jeor(profile)
    kcal = bmr * ACTIVITY_FACTORS[profile.activity or "moderate"] + GOAL_ADJUSTMENT_KCAL[goal]
    kcal = max(kcal, 1200 if profile.sex == "female" else 1500)
    assert profile.weight_kg is not None
    protein = profile.weight_kg * PROTEIN_G_PER_KG[goal]
    fat = kcal * FAT_SHARE / 9
    carbs = max(0.0, (kcal - protein * 4 - fat * 9) / 4)
    return DailyTarget(round(kcal), round(protein), round(fat), round(carbs), round(bmr))


def plan_meals(kcal: int) -> list[tuple[str, Food, float]]:
    """For each meal, the food closest to its share of the day and the portion to eat."""
    plan = []
    for meal, share in MEAL_SHARES:
        want = kcal * share
        choice = min((f for f in FOODS if f.meal == meal), key=lambda f: abs(f.kcal - want))
        portion = round(want / choice.kcal * 4) / 4 or 0.25
        plan.append((meal, choice, portion))
    return plan


GENERAL_GUIDANCE = (
    "General guidance while personalised plans are unavailable: build each meal around a "
    "palm of protein, two fists of vegetables, a fist of whole grains and a thumb of healthy "
    "fat; drink water through the day; keep processed snacks occasional."
)


class NutritionAgent:
    name = "nutrition"

    def __init__(self, profiles: ProfileBackend) -> None:
        self._profiles = profiles

    async def handle(self, request: AgentRequest) -> AgentReply:
        stored = await self._profiles.get(request.user_id)
        profile = profile_with(stored, request.user_id, request.pending) or Profile(request.user_id)
        missing = profile.missing_for_energy()
        if missing:
            asked = ", ".join(FIELD_QUESTIONS[name] for name in missing)
            return AgentReply(
                content=(
                    f"To plan your meals I need {asked}. You can say, for example: "
                    "'I am 30, 80 kg, 180 cm, male, moderately active'."
                ),
                agent=self.name,
                confidence=0.9,
                data={"missing": missing},
            )
        target = daily_target(profile)
        lines = [
            f"Your daily target is about {target.kcal} kcal "
            f"(resting {target.bmr} kcal, {profile.activity} activity, goal: "
            f"{profile.goal or 'maintain'}): protein {target.protein_g} g, "
            f"fat {target.fat_g} g, carbohydrates {target.carbs_g} g.",
            "A day that fits:",
        ]
        for meal, food, portion in plan_meals(target.kcal):
            amount = "" if portion == 1 else f" (x{portion:g})"
            lines.append(f"- {meal}: {food.name}{amount}, ~{round(food.kcal * portion)} kcal")
        return AgentReply(
            content="\n".join(lines),
            agent=self.name,
            data={"kcal": target.kcal, "protein_g": target.protein_g},
        )


def create(name: str, stores: Stores) -> NutritionAgent:
    """The ``ers.agents`` entry point ``nutrition``: the built-in agent, named ``name``."""
    agent = NutritionAgent(stores.profiles)
    agent.name = name
    return agent
