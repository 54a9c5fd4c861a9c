"""Fallback chains: the agents an agent's ``fallbacks:`` names answer for it, in order, each
through its own guard and in a ``fallback.<name>`` span, skipping one whose breaker is open,
never looping; then the cached answer and the guidance as before."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from service.agents.base import AgentRequest
from service.chat.team import Team, build_team
from service.resilience.breaker import BreakerConfig, CircuitBreaker
from service.settings import Settings
from service.stores import Stores
from tests.service.own_agents import BrokenCoach, Coach

HELPERS = "tests.service.own_agents"
WORKOUT = AgentRequest("make me a workout plan", "u1")


def python_agent(factory: str, *fallbacks: str, **more: Any) -> dict[str, Any]:
    return {"kind": "python", "factory": f"{HELPERS}:{factory}", "fallbacks": fallbacks, **more}


class Spans:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = provider.get_tracer("test")

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, [s.name for s in self.exporter.get_finished_spans()]
        return found[0]


@pytest.fixture
def spans() -> Spans:
    return Spans()


def team_of(
    tmp_path: Path, stores: Stores, spans: Spans, agents: dict[str, Any], workout: str
) -> Team:
    settings = Settings(
        env="test",
        data_dir=tmp_path / "data",
        backups_enabled=False,
        agents=agents,
        agent_routes={"workout": workout},
    )
    return build_team(stores, spans.tracer, None, None, settings)


async def test_a_failing_agent_is_answered_for_along_its_chain(
    tmp_path: Path, sqlite_stores: Stores, spans: Spans
) -> None:
    agents = {
        "primary": python_agent("broken", "down", "backup"),
        "down": python_agent("broken"),
        "backup": python_agent("coach"),
    }
    team = team_of(tmp_path, sqlite_stores, spans, agents, "primary")
    reply = await team.router.handle(WORKOUT)

    assert reply.agent == "primary"
    assert reply.content == "backup says: keep moving (make me a workout plan)"
    assert reply.degraded and reply.fallback == "agent"
    assert reply.recovery == {
        "fallback": "agent",
        "via": "backup",
        "chain": ["down", "backup"],
        "skipped": [],
    }
    assert reply.data["cause"] == "AgentFailure: primary: the coaching model is not loaded"
    primary, down, backup = (team.guards[n].agent for n in ("primary", "down", "backup"))
    assert isinstance(primary, BrokenCoach) and primary.calls == 1
    assert isinstance(down, BrokenCoach) and down.calls == 1
    assert isinstance(backup, Coach) and backup.calls == 1
    # Each hop is a span under the failing agent's; the agent asked has its own span below.
    failing = spans.one("agent.primary")
    assert failing.status.status_code is StatusCode.ERROR
    assert failing.attributes["ers.fallback"] == "agent"
    assert failing.attributes["ers.fallback.via"] == "backup"
    for hop, answered in (("down", False), ("backup", True)):
        span = spans.one(f"fallback.{hop}")
        assert span.parent is not None and span.parent.span_id == failing.context.span_id
        assert span.attributes["ers.fallback.answered"] is answered
        asked = spans.one(f"agent.{hop}")
        assert asked.parent is not None and asked.parent.span_id == span.context.span_id
    assert spans.one("agent.down").status.status_code is StatusCode.ERROR
    # The failure counts on the failing agent's breaker and the hop's, not the answerer's.
    assert team.guards["primary"].breaker.snapshot()["failureCount"] == 1
    assert team.guards["down"].breaker.snapshot()["failureCount"] == 1
    assert team.guards["backup"].breaker.snapshot()["failureCount"] == 0


async def test_an_agent_whose_breaker_is_open_is_skipped(
    tmp_path: Path, sqlite_stores: Stores, spans: Spans
) -> None:
    agents = {
        "primary": python_agent("broken", "resting", "backup"),
        "resting": python_agent("coach"),
        "backup": python_agent("coach"),
    }
    team = team_of(tmp_path, sqlite_stores, spans, agents, "primary")
    resting = team.guards["resting"]
    resting.breaker.force_open("maintenance", "test", ttl_s=300)
    assert not resting.available_now()

    reply = await team.router.handle(WORKOUT)
    assert reply.recovery is not None
    assert reply.recovery["via"] == "backup"
    assert reply.recovery["chain"] == ["backup"]
    assert reply.recovery["skipped"] == ["resting"]
    assert isinstance(resting.agent, Coach) and resting.agent.calls == 0
    assert spans.named("fallback.resting") == []
    # Asking did not take a permit: the breaker's own count of turned-away calls is unchanged.
    assert resting.breaker.snapshot()["rejectedCalls"] == 0


async def test_chains_never_loop_and_end_in_the_agents_guidance(
    tmp_path: Path, sqlite_stores: Stores, spans: Spans
) -> None:
    agents = {"left": python_agent("broken", "right"), "right": python_agent("broken", "left")}
    team = team_of(tmp_path, sqlite_stores, spans, agents, "left")
    reply = await team.router.handle(WORKOUT)

    assert reply.agent == "left" and reply.degraded
    assert reply.fallback == "generic"
    assert reply.content == BrokenCoach.guidance
    left, right = team.guards["left"].agent, team.guards["right"].agent
    assert isinstance(left, BrokenCoach) and left.calls == 1
    assert isinstance(right, BrokenCoach) and right.calls == 1
    assert len(spans.named("fallback.right")) == 1
    assert spans.named("fallback.left") == []


async def test_a_chain_that_cannot_answer_leaves_the_cached_answer(
    tmp_path: Path, sqlite_stores: Stores, spans: Spans
) -> None:
    agents = {"primary": python_agent("coach", "down"), "down": python_agent("broken")}
    team = team_of(tmp_path, sqlite_stores, spans, agents, "primary")
    first = await team.router.handle(WORKOUT)
    assert not first.degraded
    team.guards["primary"].agent = BrokenCoach("primary")

    reply = await team.router.handle(WORKOUT)
    assert reply.fallback == "cached"
    assert first.content in reply.content
    assert len(spans.named("fallback.down")) == 1
    # The reply still says which agents were asked before the cached answer.
    assert reply.recovery is not None
    assert (reply.recovery["chain"], reply.recovery["skipped"]) == (["down"], [])


async def test_a_chain_of_skipped_agents_is_named_in_the_generic_answer(
    tmp_path: Path, sqlite_stores: Stores, spans: Spans
) -> None:
    agents = {"primary": python_agent("broken", "resting"), "resting": python_agent("coach")}
    team = team_of(tmp_path, sqlite_stores, spans, agents, "primary")
    team.guards["resting"].breaker.force_open("maintenance", "test", ttl_s=300)

    reply = await team.router.handle(WORKOUT)
    assert reply.fallback == "generic" and reply.recovery is not None
    assert (reply.recovery["chain"], reply.recovery["skipped"]) == ([], ["resting"])


async def test_cached_answers_the_responder_serves_ask_no_other_agent(
    tmp_path: Path, sqlite_stores: Stores, spans: Spans
) -> None:
    agents = {"primary": python_agent("coach", "backup"), "backup": python_agent("coach")}
    team = team_of(tmp_path, sqlite_stores, spans, agents, "primary")
    first = await team.router.handle(WORKOUT)
    team.guards["primary"].fallback.serve_cached_for(60)

    reply = await team.router.handle(WORKOUT)
    assert reply.fallback == "cached" and first.content in reply.content
    backup = team.guards["backup"].agent
    assert isinstance(backup, Coach) and backup.calls == 0
    assert spans.named("fallback.backup") == []


def test_a_breaker_says_whether_it_admits_a_call_without_taking_a_permit() -> None:
    now = [0.0]
    breaker = CircuitBreaker(
        "x", BreakerConfig(failure_threshold=1, open_duration_s=10), clock=lambda: now[0]
    )
    assert breaker.admits_calls_now()
    breaker.acquire().record_failure(RuntimeError("down"))
    assert breaker.state.value == "open"
    assert not breaker.admits_calls_now()
    now[0] = 10.0
    assert breaker.admits_calls_now()
    # Still open: asking moved nothing; the next acquire makes the trial.
    assert breaker.state.value == "open"
    breaker.acquire()
    assert breaker.state.value == "half_open"
    assert not breaker.admits_calls_now()  # its one trial call is in flight
    breaker.disable()
    assert breaker.admits_calls_now()


@pytest.mark.parametrize(
    "factory",
    [
        "replies_a_dict",
        "replies_none",
        "replies_a_number",
        "replies_nan_confidence",
        "replies_confidence_above_one",
        "replies_confidence_past_any_float",  # before: OverflowError, no bad_response
        # Before: the chat credited the workout agent, and no last good answer was kept.
        "replies_as_another_agent",
    ],
)
async def test_a_reply_that_is_no_agent_reply_fails_the_agent_not_the_router(
    tmp_path: Path, sqlite_stores: Stores, spans: Spans, factory: str
) -> None:
    agents = {"primary": python_agent(factory, "backup"), "backup": python_agent("coach")}
    team = team_of(tmp_path, sqlite_stores, spans, agents, "primary")
    reply = await team.router.handle(WORKOUT)

    assert reply.agent == "primary" and reply.degraded
    assert reply.content == "backup says: keep moving (make me a workout plan)"
    # The agent failed, once (the same call gives the same reply): its breaker counts it,
    # its span is the error; the router, which only passed the reply on, did nothing wrong.
    primary = team.guards["primary"].breaker.snapshot()
    assert primary["failureCount"] == 1
    assert re.search(
        "not an AgentReply|confidence of|in the name of 'workout'", str(primary["lastError"])
    )
    assert team.guards["router"].breaker.snapshot()["failureCount"] == 0
    span = spans.one("agent.primary")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["ers.failure.kind"] == "bad_response"
    assert spans.one("agent.router").status.status_code is not StatusCode.ERROR
