"""The team of agents, each behind its guard: built once, reached by name."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace

from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from service.agents import budget, nutrition, workout
from service.agents.base import Agent, canonical_agent_name
from service.agents.config import TeamConfig, build_agent, load_team_config
from service.agents.router import GENERAL_ANSWER, RouterAgent
from service.agents.specs import AgentSpec, HttpAgentSpec
from service.chat.holds import end_holds_when_back
from service.chat.restarts import built_off_loop, rebuilder
from service.errors import AgentRestartFailed, UnknownAgent, UserInputError
from service.resilience.breaker import BreakerConfig, CircuitBreaker
from service.resilience.breaker_config import SECONDS_LIMITS
from service.resilience.bulkhead import Bulkhead
from service.resilience.call_stats import CallStats
from service.resilience.fallback import FallbackChain, FallbackPolicy, LastGoodAnswers
from service.resilience.faults import FaultInjector
from service.resilience.guard import GuardedAgent
from service.resilience.guard_config import GuardConfig
from service.resilience.instruments import AgentInstruments
from service.settings import Settings, SettingsError
from service.stores import Stores
from service.tasks import spawn

log = logging.getLogger("ers.team")
# How long an agent's aclose may take at shutdown before the service stops without it.
AGENT_CLOSE_TIMEOUT_S = 5.0


Closer = Callable[[], Awaitable[object]]


async def _close_agent(name: str, close: Closer) -> None:
    try:
        async with asyncio.timeout(AGENT_CLOSE_TIMEOUT_S):
            await close()
    except TimeoutError:
        log.error(
            "closing agent '%s' did not finish within %g s; stopping without waiting for it "
            "(its aclose must return, and let a cancellation through)",
            name,
            AGENT_CLOSE_TIMEOUT_S,
        )
    except Exception:
        log.exception("closing agent '%s' failed", name)


ROUTER_RECOVERING = "The assistant is recovering from a fault; please try again in a minute."
GENERAL_GUIDANCE = {
    "nutrition": nutrition.GENERAL_GUIDANCE,
    "workout": workout.GENERAL_GUIDANCE,
    "budget": budget.GENERAL_GUIDANCE,
    "router": f"{ROUTER_RECOVERING} {GENERAL_ANSWER}",
}
GENERIC_FALLBACK = "This agent is recovering from a fault; please try again in a minute."
# An agent's call, retries and backoff included, may take its timeout times this.
BUDGET_FACTOR = 1.6
# How long the router's limit waits past the agents' own, so theirs always come first.
ROUTER_MARGIN_S = 1.0


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
    # Closing the instances a restart replaced, once the calls begun on them had their time.
    retired: set[asyncio.Task[None]] = field(default_factory=set)
    # The factories a restart runs, by agent, until they return.
    building: dict[str, asyncio.Future[Agent]] = field(default_factory=dict)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def protect(
        self,
        agent: Agent,
        *,
        factory: Callable[[], Agent] | None = None,
        guard_config: GuardConfig | None = None,
        breaker_config: BreakerConfig | None = None,
        guidance: str | None = None,
        fallbacks: tuple[str, ...] = (),
        bulkhead: Bulkhead | None = None,
    ) -> GuardedAgent:
        """Put an agent (ours or a user's) behind a breaker, timeout, retries and fallback:
        the team's agents named in ``fallbacks`` first, then its cached or general answer."""
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
            bulkhead=bulkhead,
            chain=FallbackChain(agent.name, fallbacks, self.guards, self.tracer)
            if fallbacks
            else None,
        )
        end_holds_when_back(guarded)
        self.guards[agent.name] = guarded
        if self.instruments is not None:
            self.instruments.add_agent(agent.name)
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

    def breaker_states(self, *, advance: bool = False) -> dict[str, str]:
        """Each agent's breaker state; with ``advance``, after what time alone decides (an
        open period or a forcing that ran out while no call came)."""
        if advance:
            return {guard.name: guard.breaker.advance().value for guard in self.guards.values()}
        return {guard.name: guard.breaker.state.value for guard in self.guards.values()}

    def cooling_down(self) -> dict[str, float]:
        """The seconds left of each agent in a rate limit's cooldown."""
        left = ((guard.name, guard.cooldown_remaining()) for guard in self.guards.values())
        return {name: seconds for name, seconds in left if seconds > 0}

    async def restart(self, guard: GuardedAgent) -> bool:
        """A new instance of ``guard``'s agent from its factory, built in a thread: a factory
        that loads a model or opens a connection held every request of the service while it
        ran. The instance it replaces answers until then, and is closed (as at shutdown)
        once the calls begun on it have had their whole time, a bulkhead's wait and the
        guard's budget: closed at once, a remote agent's calls still on its connections
        failed. False without a factory; the factory's failure is raised as it is, and
        AgentRestartFailed while the factory an earlier restart called has not returned, or
        when the service stopped while it built."""
        if guard.factory is None:
            return False
        queued = guard.bulkhead.max_wait_s if guard.bulkhead is not None else 0.0
        wait = queued + guard.config.total_budget_s
        agent = await built_off_loop(
            guard.name,
            guard.factory,
            lambda unused: self._retire(guard, unused, 0),
            self.building,
        )
        if self.stopping.is_set():  # built after aclose closed the instance in place
            self._retire(guard, agent, 0)
            raise AgentRestartFailed(f"agent '{guard.name}' was not restarted: the service stopped")
        replaced, guard.agent = guard.agent, agent
        self._retire(guard, replaced, wait)
        return True

    def _retire(self, guard: GuardedAgent, agent: Agent, wait: float) -> None:
        if (close := getattr(agent, "aclose", None)) is not None:
            spawn(self.retired, self._close_retired(guard.name, close, wait))

    async def _close_retired(self, name: str, close: Closer, wait: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self.stopping.wait()  # the service stops: close it now
        await _close_agent(name, close)

    async def aclose(self) -> None:
        """Close every agent that holds something open (a remote agent's connections), all
        at once, each within ``AGENT_CLOSE_TIMEOUT_S``: an agent's ``aclose`` that never
        returns would keep the service from stopping, its stores open and its spans unsent.
        Instances a restart replaced are closed now, without waiting out their calls."""
        self.stopping.set()
        closing = [
            (guard.name, close)
            for guard in self.guards.values()
            if (close := getattr(guard.agent, "aclose", None)) is not None
        ]
        await asyncio.gather(
            *(_close_agent(name, close) for name, close in closing), *list(self.retired)
        )

    def is_healthy(self, component: str) -> bool:
        """For auto-resolve: an agent is healthy again once its breaker is closed."""
        guard = self.guards.get(component)
        return guard is None or guard.breaker.state.value == "closed"


# The BreakerConfig fields a setting can hold: numbers, not exception classes.
OVERRIDABLE = tuple(
    f.name
    for f in fields(BreakerConfig)
    if f.name not in ("record_exceptions", "ignore_exceptions")
)


def breaker_configs(settings: Settings) -> tuple[BreakerConfig, dict[str, BreakerConfig]]:
    """The default breaker config and each agent's own, from the settings.

    Raises SettingsError naming the agent and the field when an override is invalid."""
    default = BreakerConfig(
        failure_threshold=settings.circuit_breaker_threshold,
        failure_rate_threshold=settings.breaker_failure_rate_threshold,
        slow_call_duration_s=settings.breaker_slow_call_s,
        open_duration_s=settings.breaker_open_duration_s,
        max_open_duration_s=settings.breaker_max_open_duration_s,
        ignore_exceptions=(UserInputError,),
    )
    names = ("router", *settings.agents)
    per_agent = {}
    for name, overrides in settings.agent_breakers.items():
        agent = canonical_agent_name(name)
        if agent not in names:
            raise SettingsError(
                f"invalid setting 'agent_breakers.{name}': no such agent; "
                f"use one of {', '.join(names)}"
            )
        if unknown := sorted(set(overrides) - set(OVERRIDABLE)):
            raise SettingsError(
                f"invalid setting 'agent_breakers.{name}.{unknown[0]}': unknown key; use one "
                f"of {', '.join(OVERRIDABLE)}"
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
    tracer_provider: TracerProvider | None = None,
) -> Team:
    """The team of the settings' ``agents:``, each behind its guard, and the router over
    them by ``agent_routes``; SettingsError (one line) when an agent cannot be built.

    The service calls it in a thread (``asyncio.to_thread``), as a restart calls a factory
    again: a factory meets the same conditions at start and at restart, and one that needs
    the running event loop fails at start, not at its first restart."""
    default, per_agent = breaker_configs(settings)
    config = load_team_config(settings)
    timeout = settings.agent_timeout_s
    team = Team(
        tracer=tracer,
        instruments=instruments,
        faults=faults,
        breaker_config=default,
        guard_config=GuardConfig(timeout_s=timeout, total_budget_s=timeout * BUDGET_FACTOR),
    )
    members: dict[str, Agent] = {}
    for name, spec in config.specs.items():
        agent = build_agent(name, spec, config, stores, settings, tracer_provider)
        members[name] = team.protect(
            agent,
            factory=rebuilder(name, spec, config, stores, settings),
            guard_config=_guard_config(spec, team.guard_config),
            breaker_config=_breaker_for_timeout(name, spec, per_agent, default, settings),
            guidance=getattr(agent, "guidance", None) or _domain_guidance(name, config.routes),
            fallbacks=spec.fallbacks,
            bulkhead=_bulkhead(name, spec),
        )
    router = RouterAgent(members, config.routes)
    router_guard = router_guard_config(team, config)
    router_breaker = per_agent.get("router", default)
    team.protect(
        router,
        factory=lambda: RouterAgent(members, config.routes),
        guard_config=router_guard,
        # Its calls last as long as the agents' it routes to, whose breakers judge that; a
        # trial routed to a slow agent is not given up on before the agent's time is out.
        breaker_config=replace(
            router_breaker,
            slow_call_duration_s=max(router_breaker.slow_call_duration_s, router_guard.timeout_s),
            half_open_max_wait_s=max(
                router_breaker.half_open_max_wait_s, router_guard.total_budget_s
            ),
        ),
        guidance=f"{ROUTER_RECOVERING} {router.general_answer}",
    )
    for name in members.keys() - set(config.routes.values()) - reached_as_fallback(config):
        log.warning(
            "agent '%s' is in the team but no intent routes to it (agent_routes) and no agent "
            "falls back to it: chats never reach it",
            name,
        )
    return team


def router_guard_config(team: Team, config: TeamConfig) -> GuardConfig:
    """The router's guard: its limit is a net under the agents' own, past the longest a
    routed agent's call may take with its fallbacks' calls (each its bulkhead's wait and
    its guard's budget). As short as an agent's limit, it cut a slow agent's call first: the
    router took the blame (its breaker, an incident isolating it, so every chat's generic
    answer) and the agent's fallbacks never answered."""

    def longest(name: str) -> float:
        return team.guards[name].config.total_budget_s + config.specs[name].max_wait_s

    chains = (
        longest(agent) + sum(longest(other) for other in config.specs[agent].fallbacks)
        for agent in set(config.routes.values())
    )
    limit = max(team.guard_config.timeout_s, max(chains, default=0.0) + ROUTER_MARGIN_S)
    # No retry after its limit: the agents' calls it would repeat have had their time.
    return replace(team.guard_config, timeout_s=limit, total_budget_s=limit)


def _breaker_for_timeout(
    name: str,
    spec: AgentSpec,
    per_agent: dict[str, BreakerConfig],
    default: BreakerConfig,
    settings: Settings,
) -> BreakerConfig | None:
    """An agent's breaker, its slow line and its trial's wait moved with its own
    ``timeout_s``: the line keeps its share of the timeout (slow from 10 s for
    ``timeout_s: 10``, with the defaults), and a trial may take the agent's whole budget.
    Judged by the line of ``agent_timeout_s``, an agent given a longer limit (a model taking
    seconds) was slow on every call: its breaker opened, the responder isolated it, and
    each trial, as slow, opened it again. What ``agent_breakers`` sets for it stays."""
    own = per_agent.get(name)
    if spec.timeout_s is None:
        return own
    set_here = {
        key
        for given, overrides in settings.agent_breakers.items()
        if canonical_agent_name(given) == name
        for key in overrides
    }
    base = own or default
    changes = {}
    if "slow_call_duration_s" not in set_here:
        share = spec.timeout_s / settings.agent_timeout_s
        slow = base.slow_call_duration_s * share
        changes["slow_call_duration_s"] = min(slow, SECONDS_LIMITS["slow_call_duration_s"])
    if "half_open_max_wait_s" not in set_here:
        budget = spec.timeout_s * BUDGET_FACTOR
        changes["half_open_max_wait_s"] = max(base.half_open_max_wait_s, budget)
    return replace(base, **changes)


def _bulkhead(name: str, spec: AgentSpec) -> Bulkhead | None:
    """A Python agent's bulkhead as set; a remote agent always has one, as wide as its
    connection pool by default: calls beyond it would queue for a connection, and those
    waits would time out as the agent's failures (opening its breaker, isolating it),
    where a bulkhead turns them away without counting them against the agent."""
    if isinstance(spec, HttpAgentSpec):
        return Bulkhead(name, spec.concurrent_calls, spec.max_wait_s)
    if spec.max_concurrent_calls is None:
        return None
    return Bulkhead(name, spec.max_concurrent_calls, spec.max_wait_s)


def _guard_config(spec: AgentSpec, default: GuardConfig) -> GuardConfig | None:
    if spec.timeout_s is None:
        return None
    budget = spec.timeout_s * BUDGET_FACTOR
    return replace(default, timeout_s=spec.timeout_s, total_budget_s=budget)


def _domain_guidance(name: str, routes: Mapping[str, str]) -> str | None:
    """The general guidance of the first intent routed to the agent ``name`` that has one
    (``agent_routes: {workout: my_coach}``: workout's); None for none."""
    served = (GENERAL_GUIDANCE.get(intent) for intent, agent in routes.items() if agent == name)
    return next((guidance for guidance in served if guidance), None)


def reached_as_fallback(config: TeamConfig) -> set[str]:
    return {other for spec in config.specs.values() for other in spec.fallbacks}
