"""Every action of every protocol changes something a user or an operator can see; an action
on agents is skipped, with its reason, for a component that is not one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from service.agents.base import AgentReply, AgentRequest
from service.chat.minimal_mode import MINIMAL_ANSWER, MinimalMode, MinimalModeGate
from service.chat.service import ChatService
from service.chat.team import Team, build_team
from service.incidents.model import TIMELINE_KINDS
from service.incidents.responder import PROTOCOL_ACTIONS, Responder, ResponseContext
from service.settings import Settings
from service.stores import Stores
from telemetry.rule_conditions import PROTOCOLS


class Timeline:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str, str, dict[str, Any]]] = []

    def add_timeline(
        self, incident_id: str, kind: str, message: str, actor: str, data: dict[str, Any]
    ) -> None:
        assert kind in TIMELINE_KINDS, f"the incident stores refuse timeline kind {kind!r}"
        self.entries.append((incident_id, kind, message, data))


class CountingAgent:
    """Stands in for an agent: answers and counts its calls."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    async def handle(self, request: AgentRequest) -> AgentReply:
        self.calls += 1
        return AgentReply(f"fresh answer {self.calls} for {request.user_id}", self.name)


class Rig:
    def __init__(self, team: Team, stores: Stores) -> None:
        self.team = team
        self.stores = stores
        self.timeline = Timeline()
        self.counted: list[tuple[str, str, str]] = []
        self.minimal = MinimalMode()
        self.responder = Responder(
            team,
            self.timeline,
            isolate_ttl_s=60,
            minimal_mode=self.minimal,
            on_action=lambda c, r: self.counted.append((c.protocol, r.action, r.result)),
        )

    async def run(self, action: str, component: str = "nutrition", protocol: str = "P") -> Any:
        context = ResponseContext(f"INC_{action}", protocol, component, "test failure")
        return await self.responder.run_action(action, context)


@pytest.fixture
async def rig(tmp_path: Path):  # noqa: ANN201
    stores = Stores.in_directory(tmp_path)
    await stores.open()
    team = build_team(
        stores, TracerProvider().get_tracer("t"), None, None, Settings(data_dir=tmp_path)
    )
    yield Rig(team, stores)
    await stores.close()


# --- one effect check per action -------------------------------------------------------


async def isolate_turns_calls_away_from_the_agent(rig: Rig) -> None:
    guard = rig.team.get("nutrition")
    agent = guard.agent = CountingAgent("nutrition")  # type: ignore[assignment]
    request = AgentRequest("plan my meals", "u1")
    assert not (await guard.handle(request)).degraded and agent.calls == 1
    assert (await rig.run("isolate")).result == "success"
    reply = await guard.handle(request)
    assert reply.degraded and agent.calls == 1
    assert guard.breaker.state.value == "forced_open"


async def restart_agent_puts_a_new_instance_in_place(rig: Rig) -> None:
    guard = rig.team.get("nutrition")
    before = guard.agent
    assert (await rig.run("restart_agent")).result == "success"
    assert guard.agent is not before


async def serve_cached_answers_from_the_last_good_answer_without_the_agent(rig: Rig) -> None:
    guard = rig.team.get("nutrition")
    agent = guard.agent = CountingAgent("nutrition")  # type: ignore[assignment]
    now = [100.0]
    guard.fallback.clock = lambda: now[0]
    request = AgentRequest("plan my meals", "u1")
    first = await guard.handle(request)
    assert (await guard.handle(request)).content != first.content  # before: the agent answers
    assert agent.calls == 2
    await rig.team.get("workout").handle(AgentRequest("make me a workout", "u1"))

    served = await rig.run("serve_cached")
    assert served.result == "success"
    # Its own answers are counted, not the workout agent's beside them.
    assert "nutrition answers from its last good answers (1 cached)" in served.detail, served
    cached = await guard.handle(request)
    assert agent.calls == 2  # not called
    assert cached.degraded and cached.fallback == "cached"
    assert "fresh answer 2 for u1" in cached.content
    # Without a cached answer the agent is still asked; after the TTL, everyone is.
    assert not (await guard.handle(AgentRequest("plan my meals", "u2"))).degraded
    assert agent.calls == 3
    now[0] += 61
    assert not (await guard.handle(request)).degraded and agent.calls == 4


async def emergency_backup_takes_a_backup(rig: Rig) -> None:
    taken: list[str] = []

    async def backup(context: ResponseContext) -> tuple[bool, str]:
        taken.append(context.incident_id)
        return True, "snapshot 1234abcd"

    rig.responder.emergency_backup = backup
    result = await rig.run("emergency_backup", component="core")
    assert (result.result, result.detail) == ("success", "snapshot 1234abcd")
    assert taken == ["INC_emergency_backup"]


async def minimal_response_mode_answers_chat_without_agents(rig: Rig) -> None:
    agent = rig.team.get("nutrition").agent = CountingAgent("nutrition")  # type: ignore[assignment]
    chat = ChatService(
        MinimalModeGate(rig.team.router, rig.minimal),  # type: ignore[arg-type]
        rig.stores.units,
    )
    before = (await chat.chat("plan my meals for today", "u1")).as_seed_shape()
    assert before["agent"] == "nutrition" and agent.calls == 1
    assert (await rig.run("minimal_response_mode", component="core")).result == "success"
    during = (await chat.chat("plan my meals for today", "u1")).as_seed_shape()
    assert during["response"] == MINIMAL_ANSWER and during["emergency"] is True
    assert during["incident"] == "INC_minimal_response_mode"
    assert agent.calls == 1
    rig.minimal.leave()
    after = (await chat.chat("plan my meals for today", "u1")).as_seed_shape()
    assert after["agent"] == "nutrition"


async def rollback_rolls_back_only_when_allowed(rig: Rig) -> None:
    rolled: list[str] = []

    async def rollback(context: ResponseContext, run: str) -> str:
        rolled.append(context.incident_id)
        return "rolled back to 1234abcd"

    rig.responder.rollback = rollback
    refused = await rig.run("rollback", component="core")
    assert refused.result == "approval_needed" and rolled == []
    rig.responder.auto_rollback = True
    rig.responder._last_run.clear()
    assert (await rig.run("rollback", component="core")).result == "success"
    assert rolled == ["INC_rollback"]
    # emergency_rollback_enabled=false forbids rollbacks at all, the automatic ones too.
    rig.responder.rollback_allowed = False
    rig.responder._last_run.clear()
    forbidden = await rig.run("rollback", component="core")
    assert forbidden.result == "not_available" and "emergency_rollback_enabled" in forbidden.detail
    assert rolled == ["INC_rollback"]


async def trim_caches_drops_cached_answers(rig: Rig) -> None:
    for i in range(40):
        rig.team.answers.remember(AgentRequest("m", f"u{i}"), AgentReply("a", "nutrition"))
    result = await rig.run("trim_caches", component="memory")
    assert result.result == "success" and len(rig.team.answers) == 10


EFFECTS: dict[str, Callable[[Rig], Awaitable[None]]] = {
    "isolate": isolate_turns_calls_away_from_the_agent,
    "restart_agent": restart_agent_puts_a_new_instance_in_place,
    "serve_cached": serve_cached_answers_from_the_last_good_answer_without_the_agent,
    "emergency_backup": emergency_backup_takes_a_backup,
    "minimal_response_mode": minimal_response_mode_answers_chat_without_agents,
    "rollback": rollback_rolls_back_only_when_allowed,
    "trim_caches": trim_caches_drops_cached_answers,
}

PROTOCOL_STEPS = [
    (protocol, action) for protocol, actions in PROTOCOL_ACTIONS.items() for action in actions
]


def test_every_classification_protocol_is_known_to_the_responder() -> None:
    assert set(PROTOCOL_ACTIONS) | {"LOG_ONLY"} == set(PROTOCOLS)


@pytest.mark.parametrize(("protocol", "action"), PROTOCOL_STEPS)
async def test_every_protocol_action_has_an_observable_effect(
    rig: Rig, protocol: str, action: str
) -> None:
    check = EFFECTS.get(action)
    if check is None:
        pytest.fail(f"{protocol}'s action {action!r} has no effect test; add one to EFFECTS")
    await check(rig)


@pytest.mark.parametrize(("protocol", "action"), PROTOCOL_STEPS)
async def test_an_agent_action_on_an_external_service_is_skipped_with_its_reason(
    rig: Rig, protocol: str, action: str
) -> None:
    guard = rig.team.get("nutrition")
    result = await rig.run(action, component="payments", protocol=protocol)
    if action not in {"isolate", "restart_agent", "serve_cached"}:
        assert result.result != "skipped"
        return
    assert result.result == "skipped" and "'payments' is not an agent" in result.detail
    (entry,) = rig.timeline.entries
    assert entry[1] == "action_skipped" and "'payments' is not an agent" in entry[2]
    assert entry[3] == {"action": action, "result": "skipped", "reason": result.detail}
    assert rig.counted == [(protocol, action, "skipped")]
    assert not guard.fallback.serves_cached(AgentRequest("x", "u1"))
    assert guard.breaker.state.value == "closed"


@pytest.mark.parametrize("action", ["minimal_response_mode", "rollback"])
async def test_an_action_on_ers_own_chat_and_state_skips_another_services_incident(
    rig: Rig, action: str
) -> None:
    """A critical failure another service sent to /v1/traces put ERS's chat in minimal mode,
    and with automatic rollback on, rolled ERS's state back."""
    rolled: list[str] = []

    async def rollback(context: ResponseContext, run: str) -> str:
        rolled.append(context.incident_id)
        return "rolled back"

    rig.responder.auto_rollback, rig.responder.rollback = True, rollback
    context = ResponseContext(
        "INC_x", "CRITICAL_SYSTEM_FAILURE", "core", "unhandled", service="checkout"
    )
    result = await rig.responder.run_action(action, context)
    assert result.result == "skipped", result
    assert "acts on ERS's own chat and state, not on checkout" in result.detail
    assert not rig.minimal.active and rolled == []
    own = ResponseContext("INC_y", "CRITICAL_SYSTEM_FAILURE", "core", "unhandled")
    assert (await rig.responder.run_action(action, own)).result == "success"
    assert rig.minimal.active or rolled == ["INC_y"]


async def test_a_rollback_not_set_to_run_still_says_it_skips_another_services_incident(
    rig: Rig,
) -> None:
    """With automatic rollback off (the default), another service's critical incident asked
    for a person's approval of a rollback, which its incident never calls for."""
    rig.responder.auto_rollback = False
    context = ResponseContext(
        "INC_x", "CRITICAL_SYSTEM_FAILURE", "core", "unhandled", service="checkout"
    )
    result = await rig.responder.run_action("rollback", context)
    assert result.result == "skipped", result
    assert "acts on ERS's own chat and state, not on checkout" in result.detail
    own = ResponseContext("INC_y", "CRITICAL_SYSTEM_FAILURE", "core", "unhandled")
    assert (await rig.responder.run_action("rollback", own)).result == "approval_needed"


@pytest.mark.parametrize("action", ["isolate", "serve_cached"])
async def test_an_action_keeping_calls_from_an_agent_skips_a_disabled_breaker(
    rig: Rig, action: str
) -> None:
    guard = rig.team.get("nutrition")
    guard.breaker.disable(source="operator")
    result = await rig.run(action, component="nutrition")
    assert (
        result.result == "skipped" and "an operator disabled nutrition's breaker" in result.detail
    )
    assert guard.breaker.state.value == "disabled"
    assert not guard.fallback.serves_cached(AgentRequest("x", "u1"))
    guard.breaker.enable(source="operator")
    rig.responder._last_run.clear()
    assert (await rig.run(action, component="nutrition")).result == "success"


async def test_a_fleet_wide_action_another_replica_holds_is_skipped(rig: Rig) -> None:
    class Claims:
        def __init__(self) -> None:
            self.holder: dict[tuple[str, str], str] = {}

        def claim_action(
            self, incident_id: str, action: str, replica: str, cooldown_s: float
        ) -> str | None:
            holder = self.holder.setdefault((incident_id, action), replica)
            return None if holder == replica else holder

    claims = Claims()
    taken: list[str] = []

    async def backup(context: ResponseContext) -> tuple[bool, str]:
        taken.append(context.incident_id)
        return True, "snapshot"

    replicas = []
    for name in ("a", "b"):
        responder = Responder(rig.team, rig.timeline, claims=claims, replica=name)
        responder.emergency_backup = backup
        replicas.append(responder)
    context = ResponseContext("INC_9", "CRITICAL_SYSTEM_FAILURE", "core", "fatal")
    first = await replicas[0].run_action("emergency_backup", context)
    second = await replicas[1].run_action("emergency_backup", context)
    assert first.result == "success" and taken == ["INC_9"]
    assert second.result == "skipped"
    assert "replica a took emergency_backup for this incident" in second.detail
    # A rollback awaiting approval starts nothing, so it claims nothing either: another
    # replica says so too, where before it said replica a took it.
    for responder in replicas:
        refused = await responder.run_action("rollback", context)
        assert refused.result == "approval_needed", refused
    assert ("INC_9", "rollback-0") not in claims.holder and (
        "INC_9",
        "rollback",
    ) not in claims.holder


async def test_a_fleet_wide_action_runs_here_when_its_claim_cannot_be_made(rig: Rig) -> None:
    class Unreachable:
        def claim_action(self, *args: object) -> str | None:
            raise OSError("the database at 127.0.0.1:5432 does not answer")

    responder = Responder(rig.team, rig.timeline, claims=Unreachable(), replica="a")
    context = ResponseContext("INC_10", "AGENT_FAILURE", "nutrition", "crashes")
    assert (await responder.run_action("isolate", context)).result == "success"
    assert rig.team.get("nutrition").breaker.state.value == "forced_open"
