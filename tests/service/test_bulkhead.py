"""The bulkhead: at most ``max_concurrent_calls`` calls of an agent at once, the rest waiting
in line up to ``max_wait_s``, then answered by a fallback without counting on the breaker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.agents.base import AgentReply, AgentRequest
from service.chat.team import Team, build_team
from service.resilience.bulkhead import Bulkhead, register_bulkhead_metrics
from service.settings import Settings
from service.stores import Stores
from tests.service.own_agents import GatedCoach

HELPERS = "tests.service.own_agents"
WORKOUT = AgentRequest("make me a workout plan", "u1")
# Every wait below is bounded: a bug shows as a timeout, not a hung test run.
BOUND_S = 10.0


async def settle() -> None:
    """Let every ready task run until it waits again."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_calls_beyond_the_limit_wait_and_get_slots_in_arrival_order() -> None:
    bulkhead = Bulkhead("a", max_concurrent_calls=2, max_wait_s=BOUND_S)
    assert await bulkhead.enter() and await bulkhead.enter()
    admitted: list[str] = []

    async def wait(name: str) -> None:
        assert await bulkhead.enter()
        admitted.append(name)

    first, second = asyncio.create_task(wait("first")), asyncio.create_task(wait("second"))
    await settle()
    assert (bulkhead.waiting, bulkhead.in_flight, admitted) == (2, 2, [])
    bulkhead.leave()
    await asyncio.wait_for(first, BOUND_S)
    assert (bulkhead.waiting, admitted) == (1, ["first"])
    bulkhead.leave()
    await asyncio.wait_for(second, BOUND_S)
    assert (bulkhead.waiting, bulkhead.in_flight, admitted) == (0, 2, ["first", "second"])
    bulkhead.leave()
    bulkhead.leave()
    assert bulkhead.in_flight == 0


async def test_a_call_that_gets_no_slot_in_time_is_turned_away() -> None:
    bulkhead = Bulkhead("a", max_concurrent_calls=1, max_wait_s=0.01)
    assert await bulkhead.enter()
    assert not await asyncio.wait_for(bulkhead.enter(), BOUND_S)
    assert (bulkhead.waiting, bulkhead.in_flight) == (0, 1)
    no_wait = Bulkhead("b", max_concurrent_calls=1)
    assert await no_wait.enter()
    assert not await no_wait.enter()
    # The slot is still there for the next call once the first leaves.
    bulkhead.leave()
    assert await bulkhead.enter()


async def test_a_cancelled_waiter_leaves_the_line_and_loses_no_slot() -> None:
    bulkhead = Bulkhead("a", max_concurrent_calls=1, max_wait_s=BOUND_S)
    assert await bulkhead.enter()
    waiter = asyncio.create_task(bulkhead.enter())
    await settle()
    assert bulkhead.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bulkhead.waiting == 0
    bulkhead.leave()
    assert bulkhead.in_flight == 0
    assert await bulkhead.enter()


class Harness:
    def __init__(self, tmp_path: Path, stores: Stores, agents: dict[str, Any]) -> None:
        self.spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        meter = MeterProvider(metric_readers=[self.reader]).get_meter("test")
        settings = Settings(
            env="test",
            data_dir=tmp_path / "data",
            backups_enabled=False,
            agents=agents,
            agent_routes={"workout": "slow"},
        )
        self.team: Team = build_team(stores, provider.get_tracer("test"), None, None, settings)
        register_bulkhead_metrics(meter, self.team.guards)

    def waiting(self) -> dict[str, float]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return {
            str(point.attributes["agent"]): point.value
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "ers_agent_calls_waiting"
            for point in metric.data.data_points
        }


def gated_agents(max_wait_s: float, *fallbacks: str) -> dict[str, Any]:
    return {
        "slow": {
            "kind": "python",
            "factory": f"{HELPERS}:gated",
            "max_concurrent_calls": 2,
            "max_wait_s": max_wait_s,
            "fallbacks": fallbacks,
        },
        "spare": {"kind": "python", "factory": f"{HELPERS}:coach"},
    }


async def test_a_full_agent_falls_back_without_a_breaker_failure(
    tmp_path: Path, sqlite_stores: Stores
) -> None:
    harness = Harness(tmp_path, sqlite_stores, gated_agents(0.01, "spare"))
    slow = harness.team.guards["slow"]
    agent = slow.agent
    assert isinstance(agent, GatedCoach)
    holding = [asyncio.create_task(harness.team.router.handle(WORKOUT)) for _ in range(2)]
    await settle()
    assert agent.running == 2

    reply = await asyncio.wait_for(harness.team.router.handle(WORKOUT), BOUND_S)
    assert reply.agent == "slow" and reply.degraded and reply.success
    assert reply.fallback == "agent"
    assert reply.recovery is not None and reply.recovery["via"] == "spare"
    assert "no slot freed within 0.01 s" in reply.data["cause"]
    assert reply.data["bulkhead"] is True  # busy, not failing: the reply names no incident
    turned_away = [
        s for s in harness.spans.get_finished_spans() if s.attributes.get("ers.bulkhead.rejected")
    ]
    assert [s.name for s in turned_away] == ["agent.slow"]
    assert slow.breaker.snapshot()["failureCount"] == 0
    assert slow.breaker.state.value == "closed"

    agent.gate.set()
    answered = await asyncio.wait_for(asyncio.gather(*holding), BOUND_S)
    assert [r.content for r in answered] == ["slow answered", "slow answered"]
    assert agent.most_running == 2
    assert slow.bulkhead is not None and slow.bulkhead.in_flight == 0


async def test_calls_waiting_for_a_slot_are_the_metric_and_then_run(
    tmp_path: Path, sqlite_stores: Stores
) -> None:
    harness = Harness(tmp_path, sqlite_stores, gated_agents(BOUND_S))
    agent = harness.team.guards["slow"].agent
    assert isinstance(agent, GatedCoach)
    assert harness.waiting() == {"slow": 0, "spare": 0, "router": 0}
    calls = [asyncio.create_task(harness.team.router.handle(WORKOUT)) for _ in range(5)]
    await settle()
    assert agent.running == 2
    assert harness.waiting()["slow"] == 3

    agent.gate.set()
    replies: list[AgentReply] = await asyncio.wait_for(asyncio.gather(*calls), BOUND_S)
    assert [r.degraded for r in replies] == [False] * 5
    assert agent.most_running == 2
    assert harness.waiting()["slow"] == 0
