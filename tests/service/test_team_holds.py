"""What stands in an agent's place: the responder's cached answers end on the agent's breaker
events, however the breaker comes back (a trial, an operator, an alert's probe, or another
replica's change carried by the fleet); a rate-limit cooldown only when someone has just
heard the agent answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AsyncExitStack

from opentelemetry.sdk.trace import TracerProvider

from service.agents.base import AgentReply, AgentRequest
from service.chat.holds import with_ended_holds
from service.chat.team import Team
from service.fleet import FleetOverrides
from service.resilience.breaker import BreakerConfig, BreakerState
from service.resilience.guard import GuardedAgent
from service.resilience.guard_config import GuardConfig
from service.stores.postgres import PostgresDatabase

REQUEST = AgentRequest("how much did I spend", "ana")


class Answers:
    name = "budget"

    async def handle(self, request: AgentRequest) -> AgentReply:
        return AgentReply(content="42 spent", agent=self.name)


def held() -> GuardedAgent:
    """A team's budget agent with a remembered answer, served in its place and cooling down."""
    team = Team(
        tracer=TracerProvider().get_tracer("test"),
        instruments=None,
        faults=None,
        breaker_config=BreakerConfig(),
        guard_config=GuardConfig(max_attempts=1),
    )
    guarded = team.protect(Answers())
    team.answers.remember(REQUEST, AgentReply(content="41 spent", agent="budget"))
    guarded.fallback.serve_cached_for(120)
    guarded.cooldown.start(120)
    assert guarded.fallback.serves_cached(REQUEST)
    return guarded


def test_a_release_by_someone_ends_the_cached_answers_and_leaves_the_cooldown() -> None:
    guarded = held()
    guarded.breaker.force_open("incident inc-1: database", "responder", ttl_s=600)
    assert guarded.fallback.serving_cached()  # isolating does not end them

    said = with_ended_holds(guarded, lambda: guarded.breaker.release(source="operator"))
    assert guarded.breaker.state is BreakerState.HALF_OPEN
    assert not guarded.fallback.serves_cached(REQUEST)
    assert said.endswith("; its cached answers are no longer served in its place")
    # The agent asked to be left alone; a release says nothing of its rate limit.
    assert guarded.cooldown_remaining() > 100


async def test_a_forcing_that_runs_out_keeps_the_cached_answers_for_their_time() -> None:
    guarded = held()
    guarded.breaker.force_open("incident inc-1: database", "responder", ttl_s=0.01)
    await asyncio.sleep(0.05)
    assert guarded.breaker.advance() is BreakerState.HALF_OPEN
    # Nobody said the agent is back: serve_cached keeps sparing it for its time.
    assert guarded.fallback.serves_cached(REQUEST)


def test_another_replicas_trial_ends_the_cached_answers_and_leaves_the_cooldown() -> None:
    guarded = held()
    guarded.breaker.force_open("incident inc-1: database", "responder", ttl_s=600)
    # As the fleet applies it.
    guarded.breaker.close("the trial call on replica-b succeeded", source="trial on replica-b")
    assert guarded.breaker.state is BreakerState.CLOSED
    assert not guarded.fallback.serving_cached()
    # The agent asked this replica to leave it alone; a call elsewhere getting through does
    # not say it has stopped asking.
    assert guarded.cooldown_remaining() > 100


def test_an_operators_reset_ends_the_cached_answers_and_the_cooldown() -> None:
    guarded = held()
    guarded.breaker.force_open("incident inc-1: database", "responder", ttl_s=600)
    said = with_ended_holds(guarded, lambda: guarded.breaker.reset(force=True, source="ops"))
    assert guarded.breaker.state is BreakerState.CLOSED
    assert not guarded.fallback.serving_cached()
    assert guarded.cooldown_remaining() == 0
    assert said.endswith(
        "; its cached answers are no longer served in its place; its rate-limit cooldown is over"
    )


async def test_a_trial_that_closes_the_breaker_ends_the_cached_answers() -> None:
    guarded = held()
    guarded.cooldown.end()  # calls reach the agent
    guarded.breaker.force_open("isolated", "operator", ttl_s=0.01)
    await asyncio.sleep(0.05)
    assert guarded.breaker.advance() is BreakerState.HALF_OPEN
    # A request with no cached answer is a trial call; it reaches the agent, which answers.
    reply = await guarded.handle(AgentRequest("how much did I spend", "bo"))
    assert reply.content == "42 spent" and not reply.degraded
    assert guarded.breaker.state is BreakerState.CLOSED
    assert not guarded.fallback.serves_cached(REQUEST)


async def test_a_release_on_one_replica_ends_the_cached_answers_on_the_other(
    pg_url: str,
) -> None:
    """The responder on replica b isolated the agent and serves cached answers; an operator
    resolves the incident on replica a. The fleet carries the release to b, and b's users
    reach the agent again instead of getting cached answers for the rest of their time."""
    async with AsyncExitStack() as stack:
        replicas = {}
        for name in ("a", "b"):
            guarded = held()
            guarded.cooldown.end()
            database = PostgresDatabase(pg_url)
            await database.open([])
            stack.push_async_callback(database.close)
            fleet = FleetOverrides(database, pg_url, [guarded.breaker], replica=name)
            await fleet.start()
            stack.push_async_callback(fleet.stop)
            replicas[name] = guarded
        a, b = replicas["a"], replicas["b"]
        a.fallback.stop_serving_cached()  # only b's responder acted

        b.breaker.force_open("incident inc-1: database", "responder", ttl_s=600)
        await until(lambda: a.breaker.state is BreakerState.FORCED_OPEN, "the isolation on a")
        a.breaker.release(source="operator")
        await until(lambda: b.breaker.state is BreakerState.HALF_OPEN, "the release on b")
        assert not b.fallback.serves_cached(REQUEST)
        reply = await b.handle(REQUEST)  # the trial call reaches the agent, which answers
        assert reply.content == "42 spent" and not reply.degraded


async def until(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, f"{what} did not happen in {timeout_s} s"
        await asyncio.sleep(0.02)
