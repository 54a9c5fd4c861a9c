"""The team of agents, each behind its guard: built once, reached by name."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from opentelemetry import trace

from service.agents import budget, nutrition, workout
from service.agents.base import Agent, canonical_agent_name
from service.agents.budget import BudgetAgent
from service.agents.nutrition import NutritionAgent
from service.agents.router import GENERAL_ANSWER, RouterAgent
from service.agents.workout import WorkoutAgent
from service.errors import UnknownAgent, UserInputError
from service.resilience.breaker import BreakerConfig, CircuitBreaker
from service.resilience.call_stats import CallStats
from service.resilience.fallback import FallbackPolicy, LastGoodAnswers
from service.resilience.faults import FaultInjector
from service.resilience.guard import GuardConfig, GuardedAgent
from service.resilience.instruments import AgentInstruments
from service.settings import Settings, SettingsError
from service.stores import Stores

AGENT_NAMES = ("router", "nutrition", "workout", "budget")

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
    stats: CallStats = field(default_factory=CallStats)
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
            stats=self.stats,
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

    def breaker_states(self) -> dict[str, str]:
        return {guard.name: guard.breaker.state.value for guard in self.guards.values()}

    def is_healthy(self, component: str) -> bool:
        """For auto-resolve: an agent is healthy again once its breaker is closed."""
        guard = self.guards.get(component)
        return guard is None or guard.breaker.state.value == "closed"


def breaker_configs(settings: Settings) -> tuple[BreakerConfig, dict[str, BreakerConfig]]:
    """The default breaker config and each agent's own, from the settings.

    Raises SettingsError naming the agent and the field when an override is invalid."""
    default = BreakerConfig(
        failure_threshold=settings.circuit_breaker_threshold,
        failure_rate_threshold=settings.breaker_failure_rate_threshold,
        slow_call_duration_s=settings.breaker_slow_call_s,
        open_duration_s=settings.breaker_open_duration_s,
        max_open_duration_s=max(
            settings.breaker_max_open_duration_s, settings.breaker_open_duration_s
        ),
        ignore_exceptions=(UserInputError,),
    )
    per_agent = {}
    for name, overrides in settings.agent_breakers.items():
        agent = canonical_agent_name(name)
        if agent not in AGENT_NAMES:
            raise SettingsError(
                f"invalid setting 'agent_breakers.{name}': no such agent; "
                f"use one of {', '.join(AGENT_NAMES)}"
            )
        try:
            per_agent[agent] = replace(default, **overrides)
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"invalid setting 'agent_breakers.{name}': {exc}") from None
    return default, per_agent


def build_team(
    stores: Stores,
    tracer: trace.Tracer,
    instruments: AgentInstruments | None,
    faults: FaultInjector | None,
    settings: Settings,
) -> Team:
    default, per_agent = breaker_configs(settings)
    timeout = settings.agent_timeout_s
    team = Team(
        tracer=tracer,
        instruments=instruments,
        faults=faults,
        breaker_config=default,
        guard_config=GuardConfig(timeout_s=timeout, total_budget_s=timeout * 1.6),
    )
    specialists: dict[str, Agent] = {}
    for name, make in (
        ("nutrition", lambda: NutritionAgent(stores.profiles)),
        ("workout", lambda: WorkoutAgent(stores.profiles)),
        ("budget", lambda: BudgetAgent(stores.budgets)),
    ):
        specialists[name] = team.protect(make(), factory=make, breaker_config=per_agent.get(name))
    team.protect(
        RouterAgent(specialists),
        factory=lambda: RouterAgent(specialists),
        breaker_config=per_agent.get("router"),
    )
    return team
