"""The responder's restart_agent: a new instance takes the calls, and the one it replaces is
closed once the calls begun on it have had their time, or at once when the service stops."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from service.agents.base import AgentReply, AgentRequest
from service.chat.team import Team, build_team
from service.errors import AgentRestartFailed, ErsError
from service.resilience.breaker import BreakerConfig
from service.resilience.guard import GuardedAgent
from service.resilience.guard_config import GuardConfig
from service.settings import Settings
from service.stores import Stores
from tests.service import own_agents


class Connected:
    """An agent holding a connection: a call after its aclose fails."""

    name = "coach"
    made = 0

    def __init__(self) -> None:
        Connected.made += 1
        self.number = Connected.made
        self.closed = False
        self.closes = 0
        self.answering = asyncio.Event()
        self.go_on = asyncio.Event()

    async def handle(self, request: AgentRequest) -> AgentReply:
        self.answering.set()
        await self.go_on.wait()
        if self.closed:
            raise ConnectionError("the client was closed under the call")
        return AgentReply(content=f"answered by instance {self.number}", agent=self.name)

    async def aclose(self) -> None:
        self.closed = True
        self.closes += 1


def team_with(budget_s: float) -> Team:
    return Team(
        tracer=TracerProvider().get_tracer("test"),
        instruments=None,
        faults=None,
        breaker_config=BreakerConfig(),
        guard_config=GuardConfig(max_attempts=1, timeout_s=budget_s, total_budget_s=budget_s),
    )


async def test_a_call_on_the_replaced_instance_finishes_before_it_is_closed() -> None:
    team = team_with(budget_s=30)
    guard = team.protect(Connected(), factory=Connected)
    old = guard.agent
    assert isinstance(old, Connected)
    call = asyncio.create_task(guard.handle(AgentRequest("plan my week", "ana")))
    await old.answering.wait()

    assert await team.restart(guard) is True
    assert guard.agent is not old
    old.go_on.set()
    reply = await call
    assert not reply.degraded and reply.content == f"answered by instance {old.number}"
    assert old.closed is False  # its calls' time (30 s) is not over

    await team.aclose()  # the service stops: closed now, without waiting it out
    assert old.closed is True and guard.agent.closed is True  # type: ignore[attr-defined]
    assert not team.retired


async def test_the_replaced_instance_is_closed_once_its_calls_had_their_time() -> None:
    team = team_with(budget_s=0.05)
    guard = team.protect(Connected(), factory=Connected)
    old = guard.agent
    assert await team.restart(guard) is True
    (closing,) = team.retired
    await closing  # after the guard's budget of 0.05 s
    assert old.closed is True  # type: ignore[attr-defined]
    assert guard.agent.closed is False  # type: ignore[attr-defined]
    await team.aclose()


async def test_a_restart_whose_factory_now_fails_says_so_and_keeps_the_instance(
    tmp_path: Path, sqlite_stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its failure read "invalid setting 'agents.coach.factory': ..." on the incident's
    timeline, as if the settings were wrong, with a traceback in the log (no ERS error)."""
    settings = Settings(
        env="test",
        data_dir=tmp_path / "data",
        backups_enabled=False,
        agents={"coach": {"kind": "python", "factory": f"{own_agents.__name__}:fails_at_restart"}},
        agent_routes={},
    )
    team = build_team(sqlite_stores, TracerProvider().get_tracer("test"), None, None, settings)
    guard = team.get("coach")
    before = guard.agent
    monkeypatch.setattr(own_agents, "FACTORY_NOW_FAILS", True)
    with pytest.raises(AgentRestartFailed) as failed:
        await team.restart(guard)
    assert isinstance(failed.value, ErsError)
    assert str(failed.value) == (
        "agent 'coach' was not restarted and its instance answers on: "
        f"'{own_agents.__name__}:fails_at_restart' failed building agent 'coach' "
        "(RuntimeError: the model registry cannot be reached)"
    )
    assert guard.agent is before
    await team.aclose()


class SlowFactory:
    """A factory that loads a model for as long as the test holds it: it says when it has
    begun, and returns once let go (or after 10 s, saying it was not let go)."""

    def __init__(self) -> None:
        self.calls = 0
        self.building = threading.Event()
        self.let_go = threading.Event()
        self.held_past_release = False
        self.built: Connected | None = None

    def __call__(self) -> Connected:
        self.calls += 1
        self.building.set()
        self.held_past_release = not self.let_go.wait(10)
        self.built = Connected()
        return self.built


async def restart_held_building(
    team: Team,
) -> tuple[GuardedAgent, Connected, SlowFactory, asyncio.Task[bool]]:
    """A guarded Connected whose restart has begun building, held there until let go."""
    factory = SlowFactory()
    guard = team.protect(Connected(), factory=factory)
    old = guard.agent
    assert isinstance(old, Connected)
    restarting = asyncio.create_task(team.restart(guard))
    assert await asyncio.to_thread(factory.building.wait, 10)
    return guard, old, factory, restarting


async def test_the_factory_builds_in_a_thread_while_the_instance_in_place_answers() -> None:
    """restart_agent called the factory on the event loop: a factory loading a model for
    seconds held every request of the service until it returned."""
    team = team_with(budget_s=30)
    guard, old, factory, restarting = await restart_held_building(team)
    old.go_on.set()

    reply = await guard.handle(AgentRequest("plan my week", "ana"))  # while it builds
    assert reply.content == f"answered by instance {old.number}"
    assert not restarting.done() and guard.agent is old

    factory.let_go.set()
    assert await restarting is True
    assert not factory.held_past_release
    assert guard.agent is not old and isinstance(guard.agent, Connected)
    await team.aclose()


async def test_an_instance_built_after_its_restart_was_cut_short_is_closed() -> None:
    team = team_with(budget_s=30)
    guard, old, factory, restarting = await restart_held_building(team)
    restarting.cancel()  # the action's time limit
    with pytest.raises(asyncio.CancelledError):
        await restarting

    factory.let_go.set()
    async with asyncio.timeout(10):
        # The thread returns, and the instance it built, never put in place, is closed.
        while factory.built is None or not factory.built.closed:
            await asyncio.sleep(0.01)
    assert guard.agent is old and not old.closed
    await team.aclose()


async def test_an_instance_built_as_the_service_stops_is_closed_once_as_is_the_old_one() -> None:
    """Built after the team's aclose, the new instance was put in place and never closed;
    then it was, and the one it replaced, which aclose had closed, was closed a second time
    (an aclose that is not idempotent, a client closing its pool twice, failed)."""
    team = team_with(budget_s=30)
    guard, old, factory, restarting = await restart_held_building(team)
    await team.aclose()
    assert old.closed

    factory.let_go.set()
    # Not "new coach instance in place" on the incident's timeline: none is.
    with pytest.raises(AgentRestartFailed, match="^agent 'coach' was not restarted: the service"):
        await restarting
    await asyncio.gather(*team.retired)
    assert factory.built is not None and factory.built.closes == 1
    assert old.closes == 1 and guard.agent is old


async def test_no_second_build_starts_while_the_factory_has_not_returned() -> None:
    """Each restart of an agent whose factory never returns started one more thread of the
    loop's executor, which the one before still held: restarted again and again, they took
    every thread, and each asyncio.to_thread of the service waited behind them."""
    team = team_with(budget_s=30)
    guard, old, factory, restarting = await restart_held_building(team)
    restarting.cancel()  # the action's time limit: the thread builds on
    with pytest.raises(asyncio.CancelledError):
        await restarting
    with pytest.raises(AgentRestartFailed) as refused:
        await team.restart(guard)
    assert str(refused.value) == (
        "agent 'coach' was not restarted and its instance answers on: the factory has not "
        "yet returned the instance an earlier restart asked for"
    )
    assert factory.calls == 1 and guard.agent is old

    factory.let_go.set()
    async with asyncio.timeout(10):
        while team.building:  # the thread returns
            await asyncio.sleep(0.01)
    assert await team.restart(guard) is True  # let go at once: the event is set
    assert factory.calls == 2 and guard.agent is factory.built
    await team.aclose()
