"""The team from the settings' ``agents:`` and ``agent_routes``: loading by import path and by
entry point, and one actionable line for each mistake."""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from service.agents.base import AgentRequest
from service.agents.budget import BudgetAgent
from service.agents.config import (
    OWN_COMPONENTS,
    FactoryFailed,
    build_agent,
    load_team_config,
)
from service.agents.nutrition import NutritionAgent
from service.agents.specs import HttpAgentSpec, PythonAgentSpec
from service.agents.workout import GENERAL_GUIDANCE as WORKOUT_GUIDANCE
from service.agents.workout import WorkoutAgent
from service.chat.team import GENERIC_FALLBACK, Team, breaker_configs, build_team
from service.fleet.schema import COMPONENT as FLEET
from service.health.checks import CheckResult
from service.health.system_test import SYSTEM_TEST_COMPONENT
from service.incidents.audit import COMPONENT as AUDIT
from service.incidents.ledger import COMPONENT as ALERTS
from service.incidents.store_pg import COMPONENT as INCIDENTS
from service.settings import COMPONENTS, Settings, SettingsError
from service.stores import Stores
from tests.service.own_agents import ClosingCoach, Coach

HELPERS = "tests.service.own_agents"
DEFAULT_TEAM = {name: {"kind": "python", "factory": name} for name in ("nutrition", "budget")}


def make_settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(env="test", data_dir=tmp_path / "data", backups_enabled=False, **values)


def team_of(settings: Settings, stores: Stores) -> Team:
    tracer = TracerProvider().get_tracer("test")
    return build_team(stores, tracer, None, None, settings)


def test_the_default_team_is_the_built_in_agents_loaded_by_entry_point(tmp_path: Path) -> None:
    config = load_team_config(make_settings(tmp_path))
    assert list(config.specs) == ["nutrition", "workout", "budget"]
    assert all(isinstance(spec, PythonAgentSpec) for spec in config.specs.values())
    assert config.routes == {"nutrition": "nutrition", "workout": "workout", "budget": "budget"}
    assert [f"{f.__module__}:{f.__name__}" for f in config.factories.values()] == [
        "service.agents.nutrition:create",
        "service.agents.workout:create",
        "service.agents.budget:create",
    ]


async def test_the_default_team_answers_as_before(tmp_path: Path, sqlite_stores: Stores) -> None:
    team = team_of(make_settings(tmp_path), sqlite_stores)
    assert sorted(team.guards) == ["budget", "nutrition", "router", "workout"]
    kinds = {name: type(guard.agent) for name, guard in team.guards.items() if name != "router"}
    assert kinds == {"nutrition": NutritionAgent, "workout": WorkoutAgent, "budget": BudgetAgent}
    reply = await team.router.handle(AgentRequest("make me a workout plan", "u1"))
    assert reply.agent == "workout" and not reply.degraded


async def test_an_agent_by_import_path_answers_the_intent_routed_to_it(
    tmp_path: Path, sqlite_stores: Stores
) -> None:
    settings = make_settings(
        tmp_path,
        agents={**DEFAULT_TEAM, "my_coach": {"kind": "python", "factory": f"{HELPERS}:coach"}},
        agent_routes={"workout": "my_coach"},
    )
    team = team_of(settings, sqlite_stores)
    reply = await team.router.handle(AgentRequest("make me a workout plan", "u1"))
    assert reply.agent == "my_coach"
    assert reply.content == "my_coach says: keep moving (make me a workout plan)"
    coach = team.guards["my_coach"].agent
    assert isinstance(coach, Coach) and coach.calls == 1
    # agents: lists the whole team: the built-in workout agent is not in it.
    assert "workout" not in team.guards


async def test_an_agent_routed_for_an_intent_falls_back_to_that_intents_guidance(
    tmp_path: Path, sqlite_stores: Stores
) -> None:
    """An agent of the operator's own, with no guidance of its own, answered its failures
    with the generic "recovering from a fault" where the README promises general guidance
    for its domain: the domain is the intent routed to it."""
    settings = make_settings(
        tmp_path,
        agents={
            **DEFAULT_TEAM,
            "my_coach": {"kind": "python", "factory": f"{HELPERS}:replies_a_dict"},
            "spare": {"kind": "python", "factory": f"{HELPERS}:replies_a_dict"},
        },
        agent_routes={"workout": "my_coach"},
    )
    team = team_of(settings, sqlite_stores)
    reply = await team.router.handle(AgentRequest("make me a workout plan", "u1"))
    assert reply.agent == "my_coach" and reply.degraded
    assert reply.content.startswith(WORKOUT_GUIDANCE)
    # An agent no intent routes to has no domain: the generic words.
    spare = team.guards["spare"]
    assert spare.fallback.answer(AgentRequest("hi", "u1")).content == GENERIC_FALLBACK


async def test_a_built_in_agent_by_entry_point_under_another_name(
    tmp_path: Path, sqlite_stores: Stores
) -> None:
    settings = make_settings(
        tmp_path,
        agents={**DEFAULT_TEAM, "trainer": {"kind": "python", "factory": "workout"}},
        agent_routes={"workout": "trainer"},
    )
    team = team_of(settings, sqlite_stores)
    trainer = team.guards["trainer"]
    assert isinstance(trainer.agent, WorkoutAgent) and trainer.agent.name == "trainer"
    reply = await team.router.handle(AgentRequest("a beginner strength workout plan", "u1"))
    assert reply.agent == "trainer" and "Monday" in reply.content


def test_routes_name_some_intents_and_the_rest_go_to_the_agent_of_their_name(
    tmp_path: Path,
) -> None:
    agents = {**DEFAULT_TEAM, "coach": {"kind": "python", "factory": f"{HELPERS}:coach"}}
    config = load_team_config(make_settings(tmp_path, agents=agents))
    # No agent is named workout: that intent is the router's to answer.
    assert config.routes == {"nutrition": "nutrition", "budget": "budget"}
    routed = make_settings(tmp_path, agents=agents, agent_routes={"workout": "coach"})
    assert load_team_config(routed).routes == {
        "nutrition": "nutrition",
        "workout": "coach",
        "budget": "budget",
    }
    unrouted = make_settings(tmp_path, agent_routes={"budget": None})
    assert load_team_config(unrouted).routes == {"nutrition": "nutrition", "workout": "workout"}


async def test_an_unrouted_intent_gets_the_routers_general_answer(
    tmp_path: Path, sqlite_stores: Stores
) -> None:
    team = team_of(make_settings(tmp_path, agent_routes={"budget": None}), sqlite_stores)
    reply = await team.router.handle(AgentRequest("how much did I spend on my budget", "u1"))
    assert reply.agent == "router"
    assert "budget" in team.guards
    # It offers what the team's routed agents answer, not budgets.
    assert reply.content.startswith("I can help with two things: meal plans and calories")
    assert "weekly workout plans" in reply.content and "budget" not in reply.content


async def test_the_general_answer_offers_every_routed_agent(
    tmp_path: Path, sqlite_stores: Stores
) -> None:
    agents = {**DEFAULT_TEAM, "workout": {"kind": "python", "factory": "workout"}}
    team = team_of(make_settings(tmp_path, agents=agents), sqlite_stores)
    reply = await team.router.handle(AgentRequest("hello there", "u1"))
    assert reply.agent == "router"
    assert reply.content.startswith("I can help with three things: meal plans"), reply.content
    assert "weekly workout plans" in reply.content and "monthly budgets" in reply.content


def test_an_agent_nothing_reaches_is_named_at_start_up(
    tmp_path: Path, sqlite_stores: Stores, caplog: pytest.LogCaptureFixture
) -> None:
    agents = {
        **DEFAULT_TEAM,
        "coach": {"kind": "python", "factory": f"{HELPERS}:coach"},
        "spare": {"kind": "python", "factory": f"{HELPERS}:coach"},
    }
    agents["coach"]["fallbacks"] = ["spare"]
    with caplog.at_level(logging.WARNING, logger="ers.team"):
        team_of(make_settings(tmp_path, agents=agents), sqlite_stores)
    unreached = [r.getMessage() for r in caplog.records if "chats never reach it" in r.getMessage()]
    # coach: no intent routes to it; spare is coach's fallback, and the built-ins are routed.
    assert len(unreached) == 1 and unreached[0].startswith("agent 'coach' is in the team")


@pytest.mark.parametrize(
    ("agents", "routes", "expected"),
    [
        (
            {"coach": {"kind": "python", "factory": "no_such_module_here:make"}},
            {},
            "invalid setting 'agents.coach.factory': cannot import 'no_such_module_here'",
        ),
        (
            {"coach": {"kind": "python", "factory": f"{HELPERS}:no_such_factory"}},
            {},
            f"invalid setting 'agents.coach.factory': module '{HELPERS}' has no 'no_such_factory'",
        ),
        (
            {"coach": {"kind": "python", "factory": f"{HELPERS}:NOT_CALLABLE"}},
            {},
            f"invalid setting 'agents.coach.factory': '{HELPERS}:NOT_CALLABLE' is a int, not "
            "a factory",
        ),
        (
            {"coach": {"kind": "python", "factory": "no-such-entry-point"}},
            {},
            "invalid setting 'agents.coach.factory': no entry point 'no-such-entry-point' in the "
            "group 'ers.agents' (installed: budget, nutrition, workout)",
        ),
        (
            {"coach": {"factory": f"{HELPERS}:coach"}},
            {},
            "invalid setting 'agents.coach.kind': missing; use python",
        ),
        (
            {"coach": {"kind": "grpc", "factory": f"{HELPERS}:coach"}},
            {},
            "invalid setting 'agents.coach.kind': 'grpc' is not a kind of agent",
        ),
        (
            {"coach": {"kind": "python", "factory": f"{HELPERS}:coach", "fallback": ["x"]}},
            {},
            "invalid setting 'agents.coach.fallback': unknown key",
        ),
        (  # the credential, refused and not shown: where it goes instead
            {"gpt": {"kind": "http", "url": "http://127.0.0.1:9", "api_key": "sk-abc"}},
            {},
            "invalid setting 'agents.gpt.api_key': unknown key; an agent's credential goes in "
            "the file auth_file names",
        ),
        (
            {"gpt": {"kind": "http", "url": "http://127.0.0.1:9", "headers": {"X": "sk-abc"}}},
            {},
            "invalid setting 'agents.gpt.headers': unknown key; an agent's credential goes in",
        ),
        (
            {"coach": {"kind": "python", "factory": f"{HELPERS}:coach", "max_wait_s": -1}},
            {},
            "invalid setting 'agents.coach.max_wait_s': Input should be greater than or equal",
        ),
        # the value given and all that is allowed, as for the service's own settings
        (
            {"gpt": {"kind": "http", "url": "http://127.0.0.1:9", "timeout_s": 0}},
            {},
            "invalid setting 'agents.gpt.timeout_s': Input should be greater than 0 (given 0; "
            "allowed: a number above 0, at most 600)",
        ),
        (
            {"gpt": {"kind": "http", "url": "http://127.0.0.1:9", "max_connections": 0}},
            {},
            "invalid setting 'agents.gpt.max_connections': Input should be greater than or "
            "equal to 1 (given 0; allowed: a whole number from 1 to 1000)",
        ),
        (
            {"gpt": {"kind": "http", "url": "http://127.0.0.1:9", "contract": "openia"}},
            {},
            "invalid setting 'agents.gpt.contract': Input should be 'ers' or 'openai' (given "
            "'openia')",
        ),
        (
            {"router": {"kind": "python", "factory": f"{HELPERS}:coach"}},
            {},
            "invalid setting 'agents.router': the name 'router' is reserved",
        ),
        (
            {"system-test": {"kind": "python", "factory": f"{HELPERS}:coach"}},
            {},
            "invalid setting 'agents.system-test': 'system-test' names a component of ERS",
        ),
        (
            {"My Coach": {"kind": "python", "factory": f"{HELPERS}:coach"}},
            {},
            "invalid setting 'agents.My Coach': an agent's name is lowercase letters",
        ),
        (
            {"coach": {"kind": "python", "factory": f"{HELPERS}:coach", "fallbacks": ["nobody"]}},
            {},
            "invalid setting 'agents.coach.fallbacks.0': no agent named 'nobody'; use one of coach",
        ),
        (
            {"coach": {"kind": "python", "factory": f"{HELPERS}:coach", "fallbacks": ["coach"]}},
            {},
            "invalid setting 'agents.coach.fallbacks.0': 'coach' cannot fall back to itself",
        ),
        (
            {
                "coach": {"kind": "python", "factory": f"{HELPERS}:coach"},
                "helper": {
                    "kind": "http",
                    "url": "http://127.0.0.1:9/chat",
                    "fallbacks": ["coach", "coach"],
                },
            },
            {},
            "invalid setting 'agents.helper.fallbacks.1': 'coach' is already in the list",
        ),
        (
            {"coach": {"kind": "python", "factory": f"{HELPERS}:coach"}},
            {"workout": "my_coach"},
            "invalid setting 'agent_routes.workout': no agent named 'my_coach'; use one of coach",
        ),
        (
            {"coach": {"kind": "python", "factory": f"{HELPERS}:coach"}},
            {"dancing": "coach"},
            "invalid setting 'agent_routes.dancing': the router has no such intent; use one of "
            "nutrition, workout, budget",
        ),
        ({}, {}, "invalid setting 'agents': the team has no agent"),
        (
            {
                "gpt": {
                    "kind": "http",
                    "url": "http://127.0.0.1:9",
                    "max_concurrent_calls": 20,
                    "max_connections": 10,
                }
            },
            {},
            "invalid setting 'agents.gpt.max_concurrent_calls': 20 calls at once need as many "
            "connections; raise max_connections (now 10)",
        ),
        (
            {"gpt": {"kind": "http", "url": "http://127.0.0.1:9", "auth_header": "X Api: Key"}},
            {},
            "invalid setting 'agents.gpt.auth_header': not an HTTP header name (it holds ' ')",
        ),
        (
            # No file, no header: every call to an API that needs it would get a 401.
            {"gpt": {"kind": "http", "url": "http://127.0.0.1:9", "auth_header": "X-Api-Key"}},
            {},
            "invalid setting 'agents.gpt.auth_header': it is sent only with auth_file, the file "
            "holding its whole value; set auth_file, or remove auth_header",
        ),
        (
            {"gpt": {"kind": "http", "url": "http://127.0.0.1:9", "model": "gpt-4o-mini"}},
            {},
            "invalid setting 'agents.gpt.model': contract 'ers' sends no model, only contract "
            "'openai' does; remove model, or set contract: openai",
        ),
        (
            {"gpt": {"kind": "http", "url": "http:///chat"}},
            {},
            "invalid setting 'agents.gpt.url': the url has no host (nothing between :// and "
            "the path): write it as http://HOST:PORT/PATH",
        ),
        (
            {"gpt": {"kind": "http", "url": "http://me:s3cret@127.0.0.1:9/chat"}},
            {},
            "invalid setting 'agents.gpt.url': credentials in the url would show in logs",
        ),
        (
            {"gpt": {"kind": "http", "url": "http://127.0.0.1:9", "timeout_s": float("nan")}},
            {},
            "invalid setting 'agents.gpt.timeout_s': Input should be a finite number",
        ),
        (
            {"gpt": {"kind": "http", "url": "http://127.0.0.1:9", "contract": "openai"}},
            {},
            "invalid setting 'agents.gpt.model': contract 'openai' needs model",
        ),
        (
            {
                "gpt": {
                    "kind": "http",
                    "url": "https://llm.example/openai/v1?key=s3cret",
                    "contract": "openai",
                    "model": "m",
                }
            },
            {},
            "invalid setting 'agents.gpt.url': its path ends with /v1, which ERS adds itself for "
            "contract 'openai'; write the server's base URL (https://llm.example:443/openai, "
            "then the query)",
        ),
        (
            {
                "gpt": {
                    "kind": "http",
                    "url": "http://127.0.0.1:9/v1/chat/completions",
                    "contract": "openai",
                    "model": "m",
                }
            },
            {},
            "invalid setting 'agents.gpt.url': its path ends with /v1/chat/completions",
        ),
    ],
)
def test_a_mistake_in_the_team_is_one_line_naming_the_setting(
    tmp_path: Path, agents: dict[str, Any], routes: dict[str, str], expected: str
) -> None:
    settings = make_settings(tmp_path, agents=agents, agent_routes=routes)
    with pytest.raises(SettingsError) as raised:
        load_team_config(settings)
    message = str(raised.value)
    assert message.startswith(expected), message
    assert "\n" not in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        ("failing_factory", "failed building agent 'coach' (RuntimeError: the model file"),
        ("interrupting_factory", "failed building agent 'coach' (KeyboardInterrupt)"),
        ("not_an_agent", "returned a dict, not an agent"),
        ("wrong_name", "returned an agent named 'coach-other' for 'coach'"),
        # It was Python's TypeError alone, naming neither what ERS passes nor the signature.
        (
            "takes_settings",
            "cannot be called as the factory is, with the agent's name and the stores, "
            "factory(name, stores): missing a required argument: 'settings' (its signature "
            "is (name: 'str', stores: 'Stores', settings: 'dict[str, str]') -> 'Coach')",
        ),
        ("takes_nothing", "factory(name, stores): too many positional arguments (its signa"),
    ],
)
async def test_a_factory_that_does_not_give_the_agent_stops_the_build(
    tmp_path: Path, sqlite_stores: Stores, factory: str, expected: str
) -> None:
    settings = make_settings(
        tmp_path,
        agents={"coach": {"kind": "python", "factory": f"{HELPERS}:{factory}"}},
        agent_routes={},
    )
    with pytest.raises(FactoryFailed) as raised:
        team_of(settings, sqlite_stores)
    # A SettingsError at start; the problem apart, for a restart to tell in its own words.
    assert isinstance(raised.value, SettingsError)
    assert raised.value.key == "agents.coach.factory"
    assert expected in raised.value.problem
    assert str(raised.value) == f"invalid setting 'agents.coach.factory': {raised.value.problem}"


async def test_an_async_factory_is_named_as_such_and_leaves_no_coroutine_behind(
    tmp_path: Path, sqlite_stores: Stores, recwarn: pytest.WarningsRecorder
) -> None:
    settings = make_settings(
        tmp_path,
        agents={"coach": {"kind": "python", "factory": f"{HELPERS}:async_factory"}},
        agent_routes={},
    )
    with pytest.raises(SettingsError) as raised:
        team_of(settings, sqlite_stores)
    assert str(raised.value) == (
        f"invalid setting 'agents.coach.factory': '{HELPERS}:async_factory' is an async "
        "function; the factory is called (at start-up, and again by a restart), not awaited: "
        "make it a plain def"
    )
    gc.collect()
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


def test_a_module_that_exits_as_it_is_imported_is_one_line_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "exiting_agent.py").write_text(
        'import sys\nsys.exit("OPENAI_API_KEY is not set")\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = make_settings(
        tmp_path, agents={"coach": {"kind": "python", "factory": "exiting_agent:make"}}
    )
    with pytest.raises(SettingsError) as raised:
        load_team_config(settings)
    assert str(raised.value) == (
        "invalid setting 'agents.coach.factory': importing 'exiting_agent' failed "
        "(SystemExit: OPENAI_API_KEY is not set)"
    )


def test_breaker_overrides_accept_configured_agents_and_refuse_others(tmp_path: Path) -> None:
    agents = {**DEFAULT_TEAM, "my_coach": {"kind": "python", "factory": f"{HELPERS}:coach"}}
    settings = make_settings(
        tmp_path, agents=agents, agent_breakers={"my_coach": {"open_duration_s": 7}}
    )
    _, per_agent = breaker_configs(settings)
    assert per_agent["my_coach"].open_duration_s == 7
    wrong = make_settings(tmp_path, agents=agents, agent_breakers={"workout": {}})
    with pytest.raises(
        SettingsError,
        match=r"agent_breakers\.workout': no such agent; use one "
        r"of router, nutrition, budget, my_coach",
    ):
        breaker_configs(wrong)


async def test_an_agents_own_timeout_moves_its_slow_line_and_trial_wait_unless_overridden(
    tmp_path: Path, sqlite_stores: Stores
) -> None:
    agents = {
        **DEFAULT_TEAM,
        "slow_model": {"kind": "http", "url": "http://127.0.0.1:9/a", "timeout_s": 20},
        "pinned": {"kind": "http", "url": "http://127.0.0.1:9/b", "timeout_s": 20},
    }
    settings = make_settings(
        tmp_path,
        agents=agents,
        agent_routes={"workout": "slow_model"},
        agent_breakers={"pinned": {"slow_call_duration_s": 4, "half_open_max_wait_s": 6}},
    )
    team = team_of(settings, sqlite_stores)
    try:
        slow_model = team.guards["slow_model"].breaker.config
        assert slow_model.slow_call_duration_s == 20  # 5 s of agent_timeout_s's 5, so 20 of 20
        assert slow_model.half_open_max_wait_s == 32  # the whole budget of a call: 20 x 1.6
        pinned = team.guards["pinned"].breaker.config
        assert (pinned.slow_call_duration_s, pinned.half_open_max_wait_s) == (4, 6)
        nutrition = team.guards["nutrition"].breaker.config
        assert (nutrition.slow_call_duration_s, nutrition.half_open_max_wait_s) == (5, 10)
        # The router waits past the slowest chain it routes to, judges no call slow, and
        # gives a trial routed to the slow agent its time (not given up after 10 s).
        router = team.guards["router"]
        assert router.config.timeout_s == router.config.total_budget_s == 33
        assert router.breaker.config.slow_call_duration_s == 33
        assert router.breaker.config.half_open_max_wait_s == 33
    finally:
        await team.aclose()


def test_a_breaker_override_of_an_unknown_key_names_it_and_the_keys_allowed(
    tmp_path: Path,
) -> None:
    """It came out as BreakerConfig.__init__() got an unexpected keyword argument."""
    settings = make_settings(tmp_path, agent_breakers={"budget": {"nosuch": 1}})
    with pytest.raises(SettingsError) as raised:
        breaker_configs(settings)
    assert str(raised.value).startswith(
        "invalid setting 'agent_breakers.budget.nosuch': unknown key; use one of "
        "failure_threshold, failure_rate_threshold, "
    )
    assert "ignore_exceptions" not in str(raised.value)


def test_a_breaker_override_past_a_day_is_refused_at_start(tmp_path: Path) -> None:
    # Taken, it made the status and the breaker's page fail with an OverflowError (500)
    # once the breaker opened: its trial time was past what a date can hold.
    settings = make_settings(
        tmp_path,
        agent_breakers={"budget": {"open_duration_s": 1e300, "max_open_duration_s": 1e300}},
    )
    with pytest.raises(SettingsError) as raised:
        breaker_configs(settings)
    assert str(raised.value).startswith(
        "invalid setting 'agent_breakers.budget': invalid breaker config: open_duration_s must"
        " be a positive number of seconds, at most 86400, got 1e+300"
    )


async def test_a_long_agent_timeout_keeps_its_slow_line_within_a_day(
    tmp_path: Path, sqlite_stores: Stores
) -> None:
    settings = make_settings(
        tmp_path,
        agent_timeout_s=0.001,
        agents={
            **DEFAULT_TEAM,
            "slow": {"kind": "http", "url": "http://127.0.0.1:9/chat", "timeout_s": 600},
        },
        agent_routes={"workout": "slow"},
    )
    team = team_of(settings, sqlite_stores)
    try:
        assert team.guards["slow"].breaker.config.slow_call_duration_s == 86_400
    finally:
        await team.aclose()


async def test_the_team_closes_the_agents_that_hold_something_open(
    tmp_path: Path, sqlite_stores: Stores
) -> None:
    settings = make_settings(
        tmp_path,
        agents={**DEFAULT_TEAM, "keeper": {"kind": "python", "factory": f"{HELPERS}:closing"}},
        agent_routes={"workout": "keeper"},
    )
    team = team_of(settings, sqlite_stores)
    keeper = team.guards["keeper"].agent
    assert isinstance(keeper, ClosingCoach) and not keeper.closed
    await team.aclose()
    assert keeper.closed


async def test_a_remote_agent_is_built_from_its_spec_and_closed_with_the_team(
    tmp_path: Path, sqlite_stores: Stores
) -> None:
    remote = pytest.importorskip("service.agents.remote")
    settings = make_settings(
        tmp_path,
        agents={**DEFAULT_TEAM, "far": {"kind": "http", "url": "http://127.0.0.1:9/agent"}},
        agent_routes={"workout": "far"},
    )
    config = load_team_config(settings)
    assert isinstance(config.specs["far"], HttpAgentSpec)
    team = team_of(settings, sqlite_stores)
    assert isinstance(team.guards["far"].agent, remote.RemoteAgent)
    await team.aclose()


@pytest.mark.parametrize(("env", "refused"), [("production", True), ("test", False)])
async def test_production_refuses_an_auth_file_others_may_read(
    tmp_path: Path, sqlite_stores: Stores, env: str, refused: bool
) -> None:
    """The file holds the agent's credentials (an API key); production refuses it readable by
    group or others, as it refuses the restic password file."""
    auth_file = tmp_path / "helper-auth"
    auth_file.write_text("Bearer sk-abc123\n")
    auth_file.chmod(0o644)
    helper = {"kind": "http", "url": "http://127.0.0.1:9/chat", "auth_file": str(auth_file)}
    settings = Settings(
        env=env, data_dir=tmp_path / "data", backups_enabled=False, agents={"helper": helper}
    )
    config = load_team_config(settings)
    if not refused:
        agent = build_agent("helper", config.specs["helper"], config, sqlite_stores, settings)
        assert agent.name == "helper"
        await agent.aclose()  # type: ignore[attr-defined]
        return
    with pytest.raises(SettingsError) as raised:
        build_agent("helper", config.specs["helper"], config, sqlite_stores, settings)
    assert str(raised.value) == (
        f"invalid setting 'agents.helper.auth_file': {auth_file} has mode 644; run: chmod 600 "
        f"{auth_file}"
    )
    auth_file.chmod(0o600)
    agent = build_agent("helper", config.specs["helper"], config, sqlite_stores, settings)
    assert agent.name == "helper"
    await agent.aclose()  # type: ignore[attr-defined]


def test_every_component_ers_names_its_own_incidents_after_is_no_agent_name() -> None:
    """The names agents may not take are written once in the agents' config; each of the
    components ERS's own incidents are named after, defined where the failure is reported,
    must be among them, or an incident of it would isolate an agent of that name."""
    health_default = CheckResult("any", None, "").component  # type: ignore[arg-type]
    named = {*COMPONENTS, INCIDENTS, ALERTS, AUDIT, FLEET, SYSTEM_TEST_COMPONENT, health_default}
    # Set as literals where they are reported: the intake's 503s, the backups' failures.
    named |= {"intake", "backups"}
    assert named <= OWN_COMPONENTS, named - OWN_COMPONENTS
