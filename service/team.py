"""The team of agents, each behind its guard: built once, reached by name."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from opentelemetry import trace

from service.agents import budget, nutrition, workout
from service.agents.base import Agent, canonical_agent_name
from service.agents.budget import BudgetAgent
from service.agents.nutrition import NutritionAgent
from service.agents.router import GENERAL_ANSWER, RouterAgent
from service.agents.workout import WorkoutAgent
from service.errors import UnknownAgent, UserInputError
from service.faults import FaultInjector
from service.instruments import AgentInstruments
from service.resilience.breaker import BreakerConfig, CircuitBreaker
from service.resilience.fallback import FallbackPolicy, LastGoodAnswers
from service.resilience.guard import GuardConfig, GuardedAgent
from service.stores import Stores

GENERAL_GUIDANCE = {
    "nutrition": nutrition.GENERAL_GUIDANCE,
    "workout": workout.GENERAL_GUIDANCE,
    "budget": budget.GENERAL_GUIDANCE,
    "router": "The assistant is recovering from a fault; please try again in a minute. "
    + GENERAL_ANSWER,
}
GENERIC_FALLBACK = "This agent is recovering from a fault; please try again in a minute."


@dataclass
class Team:
    tracer: trace.Tracer
    instruments: AgentInstruments | None
    faults: FaultInjector | None
    breaker_config: BreakerConfig
    guard_config: GuardConfig
    answers: LastGoodAnswers = field(default_factory=LastGoodAnswers)
    guards: dict[str, GuardedAgent] = field(default_factory=dict)

    def protect(
        self,
        agent: Agent,
        *,
        factory: Callable[[], Agent] | None = None,
        guard_config: GuardConfig | None = None,
        breaker_config: BreakerConfig | None = None,
        guidance: str | None = None,
    ) -> GuardedAgent:
        """Put an agent (ours or a user's) behind a breaker, timeout, retries and fallback."""
        if agent.name in self.guards:
            raise ValueError(f"an agent named '{agent.name}' is already in the team")
        breaker = CircuitBreaker(agent.name, breaker_config or self.breaker_config)
        fallback = FallbackPolicy(
            agent.name,
            guidance or GENERAL_GUIDANCE.get(agent.name, GENERIC_FALLBACK),
            self.answers,
        )
        guarded = GuardedAgent(
            agent,
            breaker,
            fallback,
            self.tracer,
            self.instruments,
            guard_config or self.guard_config,
            self.faults,
            factory,
        )
        self.guards[agent.name] = guarded
        return guarded

    @property
    def router(self) -> GuardedAgent:
        return self.guards["router"]

    def get(self, name: str) -> GuardedAgent:
        canonical = canonical_agent_name(name)
        if canonical not in self.guards:
            raise UnknownAgent(name, sorted(self.guards))
        return self.guards[canonical]

    def breakers(self) -> Iterator[CircuitBreaker]:
        return (guard.breaker for guard in self.guards.values())


def build_team(
    stores: Stores,
    tracer: trace.Tracer,
    instruments: AgentInstruments | None,
    faults: FaultInjector | None,
    failure_threshold: int = 5,
    agent_timeout_s: float = 5.0,
) -> Team:
    team = Team(
        tracer=tracer,
        instruments=instruments,
        faults=faults,
        breaker_config=BreakerConfig(
            failure_threshold=failure_threshold, ignore_exceptions=(UserInputError,)
        ),
        guard_config=GuardConfig(timeout_s=agent_timeout_s, total_budget_s=agent_timeout_s * 1.6),
    )
    nutrition_guard = team.protect(
        NutritionAgent(stores.profiles), factory=lambda: NutritionAgent(stores.profiles)
    )
    workout_guard = team.protect(
        WorkoutAgent(stores.profiles), factory=lambda: WorkoutAgent(stores.profiles)
    )
    budget_guard = team.protect(
        BudgetAgent(stores.budgets), factory=lambda: BudgetAgent(stores.budgets)
    )
    specialists = {g.name: g for g in (nutrition_guard, workout_guard, budget_guard)}
    team.protect(
        RouterAgent(specialists, stores.profiles),
        factory=lambda: RouterAgent(specialists, stores.profiles),
    )
    return team
