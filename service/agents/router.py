"""The router agent (the seed's MCA): picks the agent whose intents fit a message best.

Each agent has weighted keyword patterns; a message's score for an agent is the sum of the
weights that match. Confidence is the winner's share of all matched weight, damped when the
evidence is thin. Profile facts in a message ("I am 30, 80 kg, ...") are saved with the turn.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from service.agents.base import Agent, AgentReply, AgentRequest
from service.agents.parsing import parse_profile_facts
from service.stores.writes import UpdateProfile

INTENTS: dict[str, tuple[tuple[str, float], ...]] = {
    "nutrition": (
        (r"\bmeals?\b", 2.0),
        (r"\bcalories?|kcal\b", 2.5),
        (r"\bmacros?\b", 2.5),
        (r"\bdiet\b", 2.0),
        (r"\bnutrition|nutrient", 2.5),
        (r"\beat(ing)?\b", 1.5),
        (r"\bprotein\b", 1.5),
        (r"\bbreakfast|lunch|dinner|snacks?\b", 1.0),
        (r"\bfood\b", 1.0),
        (r"\bcarbs?|fats?\b", 1.0),
        (r"\brecipes?\b", 1.5),
        (r"\bhungry|vegetarian|vegan\b", 1.5),
    ),
    "workout": (
        (r"\bworkouts?\b", 2.5),
        (r"\bexercises?\b", 2.0),
        (r"\btrain(ing)?\b", 2.0),
        (r"\bgym\b", 1.5),
        (r"\bstrength|stronger\b", 2.0),
        (r"\bmuscles?\b", 1.5),
        (r"\bcardio|running|run\b", 1.5),
        (r"\bsquats?|push-?ups?|deadlifts?|bench\b", 2.0),
        (r"\bfitness|fit\b", 1.5),
        (r"\bdumbbells?|barbell|kettlebells?\b", 2.0),
        (r"\breps?|sets\b", 1.0),
        (r"\bweekly plan|routine\b", 1.0),
        (r"\babs|core\b", 1.0),
    ),
    "budget": (
        (r"\bbudgets?\b", 3.0),
        (r"\bspent|spend(ing)?\b", 2.5),
        (r"\bexpenses?\b", 2.5),
        (r"[$€£]\s?\d|\b\d+\s?(dollars|euros?|bucks)\b", 2.5),
        (r"\bmoney\b", 2.0),
        (r"\bsav(e|ing|ings)\b", 1.5),
        (r"\bcost|paid|pay\b", 1.5),
        (r"\brent|bills?|groceries\b", 1.5),
        (r"\bafford\b", 2.0),
        (r"\bleft\b", 0.5),
        (r"\bfinances?|financial\b", 2.5),
    ),
}
_COMPILED = {
    agent: tuple((re.compile(pattern), weight) for pattern, weight in patterns)
    for agent, patterns in INTENTS.items()
}
# Below this much matched weight the router would be guessing.
MIN_SCORE = 1.0
# Evidence at which a clear winner gets full confidence.
FULL_EVIDENCE = 4.0

# What the router says it can help with, per intent an agent of the team answers.
CAN_HELP_WITH = {
    "nutrition": "meal plans and calories (tell me your age, weight, height, sex and activity)",
    "workout": "weekly workout plans (say your goal, level and equipment)",
    "budget": "monthly budgets ('set my food budget to $400', 'spent $25 on groceries')",
}


def general_answer(intents: Iterable[str] = INTENTS) -> str:
    """The router's answer to a message no agent of the team takes: what the agents of
    ``intents`` (the routed ones) can help with."""
    routed = set(intents)
    offers = [CAN_HELP_WITH[intent] for intent in INTENTS if intent in routed]
    if not offers:
        return "No agent of this team answers questions yet; ask the operator to add one."
    if len(offers) == 1:
        return f"I can help with {offers[0]}."
    if len(offers) == 2:
        return f"I can help with two things: {offers[0]} and {offers[1]}."
    return f"I can help with three things: {offers[0]}, {offers[1]}, and {offers[2]}."


GENERAL_ANSWER = general_answer()


@dataclass(frozen=True, slots=True)
class RouteDecision:
    agent: str | None
    confidence: float
    scores: dict[str, float]


def score_message(message: str) -> dict[str, float]:
    text = message.lower()
    return {
        agent: sum(weight for pattern, weight in patterns if pattern.search(text))
        for agent, patterns in _COMPILED.items()
    }


def route(message: str) -> RouteDecision:
    scores = score_message(message)
    best = max(scores, key=lambda name: scores[name])
    top = scores[best]
    if top < MIN_SCORE:
        return RouteDecision(None, 0.2, scores)
    share = top / sum(scores.values())
    confidence = round(share * min(1.0, 0.5 + top / (2 * FULL_EVIDENCE)), 3)
    return RouteDecision(best, confidence, scores)


_UNITS = {"weight_kg": ("weight", " kg"), "height_cm": ("height", " cm")}


def _fact_in_words(name: str, value: object) -> str:
    """'weight 80 kg', not 'weight kg 80.0'."""
    label, unit = _UNITS.get(name, (name, ""))
    shown = f"{value:g}" if isinstance(value, float) else str(value).replace("_", " ")
    return f"{label} {shown}{unit}"


class RouterAgent:
    name = "router"

    def __init__(
        self, agents: Mapping[str, Agent], routes: Mapping[str, str] | None = None
    ) -> None:
        self._agents = agents
        # Intent -> the name of the agent that answers it (the settings' agent_routes); by
        # default, the agent named like the intent.
        self._routes = (
            dict(routes) if routes is not None else {intent: intent for intent in INTENTS}
        )
        self.general_answer = general_answer(
            intent for intent, agent in self._routes.items() if agent in agents
        )

    async def handle(self, request: AgentRequest) -> AgentReply:
        facts = parse_profile_facts(request.message) if not request.synthetic else {}
        saved = bool(facts)
        writes = (UpdateProfile.of(request.user_id, **facts),) if saved else ()
        decision = route(request.message)
        target = None if decision.agent is None else self._routes.get(decision.agent)
        if target is None or target not in self._agents:
            if saved:
                listed = ", ".join(_fact_in_words(k, v) for k, v in facts.items())
                return AgentReply(
                    content=f"Saved your profile: {listed}. Ask me to plan your meals or "
                    "workouts whenever you like.",
                    agent=self.name,
                    confidence=0.9,
                    data={"profile": facts},
                    writes=writes,
                )
            return AgentReply(
                content=self.general_answer, agent=self.name, confidence=decision.confidence
            )
        chosen = self._agents[target]
        reply = await chosen.handle(
            replace(request, intent=decision.agent, pending=(*request.pending, *writes))
        )
        # The profile facts are saved even when the chosen agent could only fall back.
        return replace(
            reply,
            confidence=min(reply.confidence, decision.confidence),
            writes=(*writes, *reply.writes),
        )
