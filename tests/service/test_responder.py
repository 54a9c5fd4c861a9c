"""The responder runs each protocol's actions once per incident within a cooldown."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from service.backups.service import EmergencyBackup
from service.chat.minimal_mode import MinimalMode
from service.chat.team import build_team
from service.incidents import responder as responder_module
from service.incidents.responder import (
    PROTOCOL_ACTIONS,
    ActionResult,
    Responder,
    ResponseContext,
)
from service.settings import Settings
from service.stores import Stores


class Timeline:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str, str, str, dict[str, Any]]] = []

    def add_timeline(
        self, incident_id: str, kind: str, message: str, actor: str, data: dict[str, Any]
    ) -> None:
        self.entries.append((incident_id, kind, message, actor, data))

    def results(self) -> list[tuple[str, str]]:
        return [(e[4]["action"], e[4]["result"]) for e in self.entries if e[1] == "action_finished"]


@pytest.fixture
async def team(tmp_path: Path):  # noqa: ANN201
    stores = Stores.in_directory(tmp_path)
    await stores.open()
    yield build_team(
        stores, TracerProvider().get_tracer("t"), None, None, Settings(data_dir=tmp_path)
    )
    await stores.close()


def make(team, **kwargs: Any) -> tuple[Responder, Timeline, list[float]]:  # noqa: ANN001
    timeline = Timeline()
    now = [0.0]
    kwargs.setdefault("minimal_mode", MinimalMode())
    responder = Responder(team, timeline, clock=lambda: now[0], **kwargs)
    return responder, timeline, now


async def test_agent_failure_isolates_and_restarts(team) -> None:  # noqa: ANN001
    responder, timeline, _ = make(team, isolate_ttl_s=30)
    before = team.get("nutrition").agent
    await responder.respond(ResponseContext("INC_1", "AGENT_FAILURE", "nutrition", "crashes"))
    breaker = team.get("nutrition").breaker
    assert breaker.state.value == "forced_open"
    assert breaker.snapshot()["forced"]["source"] == "responder"
    assert team.get("nutrition").agent is not before
    assert timeline.results() == [("isolate", "success"), ("restart_agent", "success")]
    assert [e[1] for e in timeline.entries] == [
        "action_started",
        "action_finished",
        "action_started",
        "action_finished",
    ]


async def test_a_remote_agent_is_not_restarted_and_the_timeline_says_where_it_is(
    tmp_path: Path,
) -> None:
    stores = Stores.in_directory(tmp_path)
    await stores.open()
    remote = {"helper": {"kind": "http", "url": "http://127.0.0.1:9/chat", "fallbacks": []}}
    settings = Settings(
        data_dir=tmp_path, agents={"workout": {"kind": "python", "factory": "workout"}, **remote}
    )
    team = build_team(stores, TracerProvider().get_tracer("t"), None, None, settings)
    try:
        responder, timeline, _ = make(team)
        await responder.respond(ResponseContext("INC_R", "AGENT_FAILURE", "helper", "times out"))
    finally:
        await team.aclose()
        await stores.close()

    assert timeline.results() == [("isolate", "success"), ("restart_agent", "not_available")]
    (restart,) = [e[2] for e in timeline.entries if e[4]["action"] == "restart_agent"][1:]
    assert "a remote agent (kind: http)" in restart
    assert "restarted where it runs" in restart


async def test_actions_run_once_per_incident_within_the_cooldown(team) -> None:  # noqa: ANN001
    responder, timeline, now = make(team, cooldown_s=60)
    context = ResponseContext("INC_2", "SERVICE_DEGRADATION", "budget", "db timeouts")
    first = await responder.respond(context)
    second = await responder.respond(context)
    assert [r.result for r in first] == ["success", "success"]
    assert [r.result for r in second] == ["skipped", "skipped"]
    other = await responder.respond(ResponseContext("INC_3", "SERVICE_DEGRADATION", "budget", "x"))
    assert [r.result for r in other] == ["success", "success"]
    now[0] += 61
    assert [r.result for r in await responder.respond(context)] == ["success", "success"]


async def test_critical_failure_without_backups_and_auto_rollback(team) -> None:  # noqa: ANN001
    responder, timeline, _ = make(team)
    context = ResponseContext("INC_4", "CRITICAL_SYSTEM_FAILURE", "core", "uncaught")

    async def results() -> list[tuple[str, str]]:
        return [(r.action, r.result) for r in await responder.respond(context)]

    assert await results() == [
        ("emergency_backup", "not_available"),
        ("minimal_response_mode", "success"),
        ("rollback", "approval_needed"),
    ]
    assert responder.minimal_mode is not None and responder.minimal_mode.active
    # What did not start says so and no more: no "started" on the timeline (which a restart
    # would read as a cooldown), and nothing held off when it is asked again.
    started = [e[4]["action"] for e in timeline.entries if e[1] == "action_started"]
    assert started == ["minimal_response_mode"]
    assert await results() == [
        ("emergency_backup", "not_available"),
        ("minimal_response_mode", "skipped"),
        ("rollback", "approval_needed"),
    ]


async def test_critical_failure_with_backups_and_auto_rollback(team) -> None:  # noqa: ANN001
    responder, _, _ = make(team, auto_rollback=True)
    calls: list[str] = []

    async def backup(context: ResponseContext) -> tuple[bool, str]:
        calls.append("backup")
        return True, "snapshot 1234abcd"

    async def rollback(context: ResponseContext, run: str) -> str:
        calls.append("rollback")
        return "rolled back to 1234abcd"

    responder.emergency_backup, responder.rollback = backup, rollback
    results = await responder.respond(ResponseContext("INC_5", "CRITICAL_SYSTEM_FAILURE", "x", "y"))
    assert [r.result for r in results] == ["success", "success", "success"]
    assert calls == ["backup", "rollback"]


class Trail:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict[str, Any]]] = []

    def record(self, actor: str, action: str, detail: dict[str, Any]) -> None:
        self.entries.append((actor, action, detail))


async def test_a_rollback_is_not_cut_off_at_the_limit_of_other_actions(
    team,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rollback of a large state, or from a remote repository, takes more than the 120 s
    an action may run: it was cut off ("failed — TimeoutError:"), having paused every writer
    for those two minutes, and ran again, from the start, at the alert's next delivery."""
    monkeypatch.setattr(responder_module, "ACTION_LIMIT_S", 0.05)
    responder, _, _ = make(team, auto_rollback=True)

    async def slow(context: ResponseContext, run: str) -> str:
        await asyncio.sleep(0.3)
        return "rolled back to 1234abcd"

    responder.rollback = slow
    context = ResponseContext("INC_9", "CRITICAL_SYSTEM_FAILURE", "budget", "critical z")
    assert (await responder.run_action("rollback", context)).result == "success"

    async def slow_action(context: ResponseContext) -> ActionResult:
        await asyncio.sleep(0.3)
        return ActionResult("trim_caches", "success", "trimmed")

    responder._actions["trim_caches"] = slow_action  # any other action is cut off there
    cut = await responder.run_action("trim_caches", context)
    assert (cut.result, cut.detail) == ("failed", "TimeoutError: ")


async def test_a_rollback_still_running_past_the_cooldown_is_not_started_again(
    team,  # noqa: ANN001
) -> None:
    """With no limit on its time, a rollback may outlast the cooldown: a second trigger for
    the incident (an alert landing on it) then started a second rollback, which restored the
    same snapshot again once the first was done, over the writes made in between."""
    responder, _, now = make(team, auto_rollback=True)
    started, release = asyncio.Event(), asyncio.Event()
    runs = []

    async def slow(context: ResponseContext, run: str) -> str:
        runs.append(context.source)
        if len(runs) == 1:  # the first runs on until released
            started.set()
            await release.wait()
        return "rolled back to 1234abcd"

    responder.rollback = slow
    context = ResponseContext("INC_10", "CRITICAL_SYSTEM_FAILURE", "budget", "critical w")
    first = asyncio.create_task(responder.run_action("rollback", context))
    await started.wait()
    now[0] += responder.cooldown_s + 1  # the cooldown is over; the rollback runs on
    again = replace(context, source="alertmanager")
    assert (await responder.run_action("rollback", again)).result == "skipped"
    release.set()
    assert (await first).result == "success"
    assert runs == ["responder"]
    # Its cooldown counts from its end too: not run again at once once it is done.
    assert (await responder.run_action("rollback", again)).result == "skipped"
    assert runs == ["responder"]


async def test_every_automatic_rollback_is_in_the_audit_trail_failed_ones_too(
    team,  # noqa: ANN001
) -> None:
    responder, _, _ = make(team, auto_rollback=True)
    responder.audit = trail = Trail()
    outcomes = iter(["rolled back to 1234abcd", OSError("repository unreachable")])

    async def rollback(context: ResponseContext, run: str) -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    responder.rollback = rollback
    context = ResponseContext("INC_7", "ALERT", "ers", "alert X", source="alertmanager")
    assert (await responder.run_action("rollback", context)).result == "success"
    context = ResponseContext("INC_8", "CRITICAL_SYSTEM_FAILURE", "budget", "critical y")
    assert (await responder.run_action("rollback", context)).result == "failed"
    # Each has its start in the trail before it runs: a kill cannot take both away.
    assert [(actor, action) for actor, action, _ in trail.entries] == [
        ("alertmanager", "rollback_started"),
        ("alertmanager", "rollback"),
        ("responder", "rollback_started"),
        ("responder", "rollback"),
    ]
    start = trail.entries[0][2]
    assert {
        "beforeIncident": "INC_7",
        "reason": "alert X",
        "pid": os.getpid(),
    }.items() <= start.items()
    first, second = (detail for _, action, detail in trail.entries if action == "rollback")
    # Each outcome names its start's run, so that a start without one is found (a kill).
    assert first["run"] == start["run"] and second["run"] == trail.entries[2][2]["run"]
    assert first["run"] != second["run"]
    assert first["beforeIncident"] == "INC_7" and first["result"] == "rolled back to 1234abcd"
    assert first["error"] is None
    assert second["result"] is None and "repository unreachable" in second["error"]


async def test_an_emergency_backup_covered_by_a_recent_one_is_recorded_as_skipped(
    team,  # noqa: ANN001
) -> None:
    counted: list[tuple[str, str, str]] = []
    responder, timeline, _ = make(
        team, on_action=lambda c, r: counted.append((c.protocol, r.action, r.result))
    )
    covered = "an emergency backup ran 239 s ago, within the cooldown of 300 s: snapshot 16e38c53"

    async def backup(context: ResponseContext) -> tuple[bool, str]:
        return False, covered  # no snapshot taken: the cooldown's backup covers it

    responder.emergency_backup = backup
    context = ResponseContext("INC_9", "CRITICAL_SYSTEM_FAILURE", "budget", "core down")
    result = await responder.run_action("emergency_backup", context)
    assert (result.result, result.detail) == ("skipped", covered)
    assert counted == [("CRITICAL_SYSTEM_FAILURE", "emergency_backup", "skipped")]
    (finished,) = [e for e in timeline.entries if e[1] == "action_finished"]
    assert finished[2] == f"emergency_backup: skipped — {covered}"
    assert finished[4] == {"action": "emergency_backup", "result": "skipped", "reason": covered}


async def test_a_failing_action_is_recorded_not_raised(team) -> None:  # noqa: ANN001
    responder, timeline, _ = make(team)

    async def broken(context: ResponseContext) -> tuple[bool, str]:
        raise OSError("repository unreachable")

    responder.emergency_backup = broken
    results = await responder.respond(ResponseContext("INC_6", "CRITICAL_SYSTEM_FAILURE", "x", "y"))
    assert results[0].result == "failed" and "repository unreachable" in results[0].detail
    assert results[1].result == "success"


async def test_resource_exhaustion_trims_caches(team) -> None:  # noqa: ANN001
    from service.agents.base import AgentReply, AgentRequest

    for i in range(100):
        team.answers.remember(AgentRequest("m", f"u{i}"), AgentReply("a", "nutrition"))
    responder, _, _ = make(team)
    (result,) = await responder.respond(ResponseContext("INC_7", "RESOURCE_EXHAUSTION", "s", "m"))
    assert result.result == "success" and "dropped 75" in result.detail
    assert len(team.answers) == 25


async def test_an_alerts_cleanup_trims_only_where_memory_is_over_the_line(team) -> None:  # noqa: ANN001
    from service.agents.base import AgentReply, AgentRequest

    for i in range(100):
        team.answers.remember(AgentRequest("m", f"u{i}"), AgentReply("a", "nutrition"))
    share = [0.35]
    responder, _, _ = make(team, memory=lambda: (share[0], 0.8))
    alert = ResponseContext("INC_8", "ALERT", "memory", "MemoryCritical", source="alertmanager")
    skipped = await responder.run_action("trim_caches", alert)
    assert skipped.result == "skipped" and "memory here is at 35%" in skipped.detail
    assert len(team.answers) == 100
    share[0] = 0.93
    trimmed = await responder.run_action("trim_caches", replace(alert, incident_id="INC_9"))
    assert trimmed.result == "success" and len(team.answers) == 25
    # The responder's own incident comes from this process's failure: trimmed here as ever.
    share[0] = 0.1
    (own,) = await responder.respond(ResponseContext("INC_10", "RESOURCE_EXHAUSTION", "s", "m"))
    assert own.result == "success"


def test_every_protocol_names_known_actions(team) -> None:  # noqa: ANN001
    responder, _, _ = make(team)
    for actions in PROTOCOL_ACTIONS.values():
        for action in actions:
            assert action in responder._actions
    assert responder.actions_for("LOG_ONLY") == ()


@dataclass
class Stored:
    """A timeline entry as the incident store reads it back."""

    kind: str
    actor: str
    at: float
    data: dict[str, Any]


async def test_a_rollback_an_alert_started_before_a_kill_holds_off_another_alert(
    team,  # noqa: ANN001
) -> None:
    # The process before a kill -9 wrote this 71 s ago, and died before the rollback ended.
    entries = [Stored("action_started", "alertmanager", 929.0, {"action": "rollback"})]
    responder, _, _ = make(
        team,
        auto_rollback=True,
        read_timeline=lambda incident_id: entries,
        wall_clock=lambda: 1000.0,
    )
    rollbacks: list[str] = []

    async def rollback(context: ResponseContext, run: str) -> str:
        rollbacks.append(context.reason)
        return "rolled back to 1234abcd"

    responder.rollback = rollback
    another_alert = ResponseContext(
        "INC_9", "ALERT", "ers", "alert CriticalIncidentUnresolved", source="alertmanager"
    )
    skipped = await responder.run_action("rollback", another_alert)
    assert (skipped.result, rollbacks) == ("skipped", [])  # before: a second rollback ran

    # One that failed held nothing back: the next asks again.
    entries.append(
        Stored("action_finished", "alertmanager", 930.0, {"action": "rollback", "result": "failed"})
    )
    responder._last_run.clear()  # as a new process has it
    ran = await responder.run_action("rollback", another_alert)
    assert (ran.result, len(rollbacks)) == ("success", 1)


async def test_an_isolation_a_kill_cut_off_is_run_by_the_alerts_next_delivery(
    team,  # noqa: ANN001
) -> None:
    """The start after the kill noted the alert's action cut off and said its next delivery
    takes it again; before, that delivery was skipped for the cooldown ("its result is
    above", none was), and the agent stayed in service for 300 s more."""
    lost = {"lost": True}
    entries = [
        Stored("action_started", "alertmanager", 990.0, {"action": "isolate", "episode": 0}),
        Stored("note", "ers", 995.0, lost),
    ]
    responder, timeline, _ = make(
        team, read_timeline=lambda incident_id: entries, wall_clock=lambda: 1000.0
    )
    alert = ResponseContext(
        "INC_9", "ALERT", "nutrition", "alert AgentErrorRatioHigh", source="alertmanager"
    )
    ran = await responder.run_action("isolate", alert)
    assert ran.result == "success", ran
    assert team.get("nutrition").breaker.state.value == "forced_open"

    # A note of another alert's action cut off leaves an isolation that finished in force.
    entries[:] = [
        Stored("action_started", "alertmanager", 900.0, {"action": "isolate", "episode": 0}),
        Stored(
            "action_finished", "alertmanager", 901.0, {"action": "isolate", "result": "success"}
        ),
        Stored("note", "ers", 995.0, lost),
    ]
    responder._last_run.clear()  # as a new process has it
    assert (await responder.run_action("isolate", alert)).result == "skipped"

    # In a reopened incident (episode 1) too: its ends carry no episode of their own.
    reopened = ResponseContext(
        "INC_9", "ALERT", "nutrition", "alert AgentErrorRatioHigh", source="alertmanager", episode=1
    )
    entries[:] = [
        Stored("action_started", "alertmanager", 900.0, {"action": "isolate", "episode": 1}),
        Stored(
            "action_finished", "alertmanager", 901.0, {"action": "isolate", "result": "success"}
        ),
        Stored("note", "ers", 995.0, lost),
    ]
    responder._last_run.clear()
    assert (await responder.run_action("isolate", reopened)).result == "skipped"
    # Another alert's receipt (which names its action) ends no start: the kill still cut it.
    entries[:] = [
        Stored("action_started", "alertmanager", 990.0, {"action": "isolate", "episode": 0}),
        Stored("alert_received", "alertmanager", 991.0, {"action": "isolate"}),
        Stored("note", "ers", 995.0, lost),
    ]
    responder._last_run.clear()
    team.get("nutrition").breaker.reset()
    assert (await responder.run_action("isolate", alert)).result == "success"


async def test_a_failed_action_is_run_again_by_the_next_call_within_the_cooldown(
    team,  # noqa: ANN001
) -> None:
    responder, timeline, _ = make(team, cooldown_s=300)
    tries: list[int] = []

    async def backup(context: ResponseContext) -> EmergencyBackup:
        tries.append(1)
        if len(tries) == 1:
            raise RuntimeError("the repository is out of reach")
        return EmergencyBackup(True, "snapshot 1234abcd")

    responder.emergency_backup = backup
    context = ResponseContext(
        "INC_10", "ALERT", "budgets", "alert BackupStale", source="alertmanager"
    )
    results = [(await responder.run_action("emergency_backup", context)).result for _ in range(3)]
    # Before: the second delivery was skipped for the cooldown, and no backup was ever taken.
    assert results == ["failed", "success", "skipped"]
    assert len(tries) == 2


async def test_an_automatic_isolation_never_takes_over_an_operators(
    team,  # noqa: ANN001
) -> None:
    responder, timeline, _ = make(team)
    breaker = team.get("nutrition").breaker
    breaker.force_open("operator: bad meal data", "operator", ttl_s=3600)
    expires = breaker.snapshot()["forced"]["expiresAt"]
    for source in ("alertmanager", "responder"):
        context = ResponseContext(f"INC_{source}", "ALERT", "nutrition", "alert", source=source)
        result = await responder.run_action("isolate", context)
        assert result.result == "skipped" and "forced open by operator" in result.detail
    forced = breaker.snapshot()["forced"]
    assert (forced["source"], forced["reason"]) == ("operator", "operator: bad meal data")
    assert forced["expiresAt"] == expires  # not cut to the alert's 900 s
