"""A user's own agent under ``ers serve``: added by import path in the settings file, routed an
intent, answered for along its fallback chain when it fails; and a team that cannot be
built stops ``ers serve`` with one line."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ROOT, ErsProcess, free_port, start_ers
from tests.processes import serve

pytestmark = pytest.mark.integration

HELPERS = "tests.service.own_agents"
NOT_AN_AGENT = f"{HELPERS}:not_an_agent"
EXITING = f"{HELPERS}:exiting_factory"
LOOP_BOUND = f"{HELPERS}:loop_bound_factory"
BUILT_IN = {name: {"kind": "python", "factory": name} for name in ("nutrition", "workout")}


def settings_file(path: Path, agents: dict[str, Any], routes: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"agents": agents, "agent_routes": routes}))
    return path


def test_a_failing_agent_of_ones_own_falls_back_along_its_chain(tmp_path: Path) -> None:
    agents = {
        **BUILT_IN,
        "my_coach": {
            "kind": "python",
            "factory": f"{HELPERS}:broken",
            "fallbacks": ["resting", "workout"],
            "max_concurrent_calls": 4,
            "max_wait_s": 1,
        },
        "resting": {"kind": "python", "factory": f"{HELPERS}:coach"},
    }
    config = settings_file(tmp_path / "ers.yaml", agents, {"workout": "my_coach"})
    env = {"ERS_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
    ers = start_ers(tmp_path / "ers", env=env)
    try:
        with httpx.Client(base_url=ers.url, timeout=30) as http:
            forced = http.post(
                "/api/emergency/circuit-breaker/resting/force-open",
                json={"reason": "kept out of the chain", "ttlSeconds": 300},
            )
            assert forced.status_code == 200, forced.text
            reply = http.post("/chat", json={"message": "make me a workout plan", "userId": "u"})
            assert reply.status_code == 200, reply.text
            body = reply.json()
            off_topic = http.post("/chat", json={"message": "plan my budget", "userId": "u"})
            assert off_topic.status_code == 200, off_topic.text
            metrics = http.get("/metrics").text
    finally:
        exit_code = ers.stop()
    assert exit_code == 0, ers.log()[-4000:]

    assert body["agent"] == "my_coach"
    assert body["emergency"] is True
    assert body["recovery"]["fallback"] == "agent"
    assert body["recovery"]["via"] == "workout"
    assert body["recovery"]["chain"] == ["workout"]
    assert body["recovery"]["skipped"] == ["resting"]
    # The built-in workout agent's answer: it asks what it needs for a plan, or gives one.
    assert re.search(r"workout|week|goal|level", body["response"], re.IGNORECASE)
    # No agent is routed the budget intent: the router answers for itself.
    assert off_topic.json()["agent"] == "router"
    assert 'ers_fallbacks_total{agent="my_coach",kind="agent"} 1.0' in metrics
    assert 'ers_agent_calls_waiting{agent="my_coach"} 0.0' in metrics
    failed = re.search(r'ers_agent_calls_total\{agent="my_coach",outcome="failure"\} 1\.0', metrics)
    assert failed, metrics


@pytest.mark.parametrize(
    ("agents", "routes", "expected"),
    [
        (
            BUILT_IN,
            {"workout": "my_coach"},
            "ers: invalid setting 'agent_routes.workout': no agent named 'my_coach'; use one "
            "of nutrition, workout",
        ),
        (
            {**BUILT_IN, "my_coach": {"kind": "python", "factory": "my_agents.coach:make"}},
            {"workout": "my_coach"},
            "ers: invalid setting 'agents.my_coach.factory': cannot import 'my_agents.coach'",
        ),
        (
            {**BUILT_IN, "my_coach": {"kind": "python", "factory": NOT_AN_AGENT}},
            {"workout": "my_coach"},
            "ers: invalid setting 'agents.my_coach.factory': "
            f"'{HELPERS}:not_an_agent' returned a dict, not an agent",
        ),
        (
            {**BUILT_IN, "my_coach": {"kind": "python", "factory": EXITING}},
            {"workout": "my_coach"},
            "ers: invalid setting 'agents.my_coach.factory': "
            f"'{EXITING}' failed building agent 'my_coach' (SystemExit: OPENAI_API_KEY is not set)",
        ),
        (
            # It would fail at its first restart (the factory runs in a thread then); it fails
            # where it is written, at start.
            {**BUILT_IN, "my_coach": {"kind": "python", "factory": LOOP_BOUND}},
            {"workout": "my_coach"},
            "ers: invalid setting 'agents.my_coach.factory': "
            f"'{LOOP_BOUND}' failed building agent 'my_coach' (RuntimeError: no running event "
            "loop",
        ),
    ],
)
def test_serve_with_a_team_that_cannot_be_built_prints_one_line(
    tmp_path: Path, agents: dict[str, Any], routes: dict[str, str], expected: str
) -> None:
    config = settings_file(tmp_path / "ers.yaml", agents, routes)
    port = str(free_port())
    result = serve(
        tmp_path,
        "--host",
        "127.0.0.1",
        "--port",
        port,
        ERS_CONFIG=str(config),
        PYTHONPATH=str(ROOT),
    )
    lines = result.stderr.strip().splitlines()
    # Names and imports are checked before the server starts; a factory runs in its start-up,
    # after uvicorn has said it is starting.
    built = agents.get("my_coach", {}).get("factory") in (NOT_AN_AGENT, EXITING, LOOP_BOUND)
    said = lines[-1:] if built else lines
    assert len(said) == 1 and said[0].startswith(expected), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2


COACH = """from service.agents.base import AgentReply, AgentRequest


class Coach:
    guidance = "Move a little every day; the coach is back soon."

    def __init__(self, name: str) -> None:
        self.name = name

    async def handle(self, request: AgentRequest) -> AgentReply:
        return AgentReply(f"Three sets of squats today. ({request.message})", self.name)


def make(name, stores):
    return Coach(name)
"""


def test_the_readmes_own_agent_beside_ers_yaml_starts_as_the_readme_and_the_refusal_say(
    tmp_path: Path,
) -> None:
    """The README's my_agents/coach.py beside ers.yaml, started with the installed `ers`
    script, which does not import from the folder it runs in: the refusal said only 'install
    it or fix the module path', and neither it nor the README said how to start it."""
    (tmp_path / "my_agents").mkdir()
    (tmp_path / "my_agents" / "__init__.py").write_text("")
    (tmp_path / "my_agents" / "coach.py").write_text(COACH)
    agents = {**BUILT_IN, "my_coach": {"kind": "python", "factory": "my_agents.coach:make"}}
    settings_file(tmp_path / "ers.yaml", agents, {"workout": "my_coach"})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ERS_", "OTEL_", "PYTHON"))}
    env.update({"ERS_ENV": "test", "ERS_BACKUPS_ENABLED": "false"})
    ers_script = str(Path(sys.executable).with_name("ers"))
    refused = subprocess.run(
        [ers_script, "serve", "--port", str(free_port())],
        env={**env, "ERS_DATA_DIR": str(tmp_path / "refused")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2, refused.stderr
    assert "PYTHONPATH=. ers serve" in refused.stderr.strip().splitlines()[-1]

    # As the refusal says: the same command with PYTHONPATH=. (the shell's cwd is tmp_path).
    ers = start_ers(tmp_path / "ers", env={"PYTHONPATH": "..", "ERS_CONFIG": "../ers.yaml"})
    try:
        reply = httpx.post(
            f"{ers.url}/chat", json={"message": "make me a workout plan", "userId": "u"}, timeout=30
        )
    finally:
        assert ers.stop() == 0
    assert reply.status_code == 200, reply.text
    assert reply.json()["agent"] == "my_coach"
    assert reply.json()["response"].startswith("Three sets of squats today.")


WHY_NOT_A_REPLY = {
    "replies_nan_confidence": "a number from 0 to 1",
    "replies_confidence_above_one": "a number from 0 to 1",
    "replies_too_long": "a reply is at most",
    "replies_a_lone_surrogate": "a lone surrogate",
    "replies_a_nul": "a NUL character",
}


@pytest.mark.parametrize(
    "factory,engine",
    [(factory, "sqlite") for factory in WHY_NOT_A_REPLY] + [("replies_a_nul", "postgresql")],
)
def test_an_agent_replying_with_a_confidence_out_of_range_falls_back_instead_of_a_500(
    tmp_path: Path, factory: str, engine: str, request: pytest.FixtureRequest
) -> None:
    agents = {
        **BUILT_IN,
        "my_coach": {"kind": "python", "factory": f"{HELPERS}:{factory}", "fallbacks": ["workout"]},
    }
    config = settings_file(tmp_path / "ers.yaml", agents, {"workout": "my_coach"})
    env = {"ERS_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
    if engine == "postgresql":  # where a NUL cannot be stored: a 503 on every chat it was
        env["ERS_DATABASE_URL"] = request.getfixturevalue("pg_url")
    ers = start_ers(tmp_path / "ers", env=env)
    try:
        with httpx.Client(base_url=ers.url, timeout=30) as http:
            chat = {"message": "make me a workout plan", "userId": "u"}
            reply = http.post("/chat", json=chat, headers={"Idempotency-Key": "k-1"})
            again = http.post("/chat", json=chat, headers={"Idempotency-Key": "k-1"})
            breaker = http.get("/api/emergency/circuit-breakers/my_coach").json()
    finally:
        assert ers.stop() == 0, ers.log()[-4000:]
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["agent"] == "my_coach" and body["emergency"] is True, body
    assert body["recovery"]["via"] == "workout"
    assert 0 <= body["confidence"] <= 1
    # A fallback reply recorded nothing, so its key is not remembered: the retry asks again
    # and gets the same fallback, not a replay.
    assert again.status_code == 200, again.text
    assert "idempotent-replayed" not in again.headers
    assert {k: v for k, v in again.json().items() if k != "traceId"} == {
        k: v for k, v in body.items() if k != "traceId"
    }
    assert WHY_NOT_A_REPLY[factory] in breaker["lastError"], breaker


def test_an_agent_whose_aclose_never_returns_does_not_keep_the_service_from_stopping(
    tmp_path: Path,
) -> None:
    agents = {
        **BUILT_IN,
        "my_coach": {"kind": "python", "factory": f"{HELPERS}:never_closing"},
        "remote": {"kind": "http", "url": "http://127.0.0.1:9/chat", "fallbacks": ["my_coach"]},
    }
    config = settings_file(tmp_path / "ers.yaml", agents, {"workout": "remote"})
    ers = start_ers(tmp_path / "ers", env={"ERS_CONFIG": str(config), "PYTHONPATH": str(ROOT)})
    with httpx.Client(base_url=ers.url, timeout=30) as http:
        reply = http.post("/chat", json={"message": "make me a workout plan", "userId": "u"})
    assert reply.status_code == 200, reply.text
    started = time.monotonic()
    # A SIGTERM, as systemd or docker stop sends it: the service stops on its own.
    exit_code = ers.stop(timeout=30)
    assert exit_code == 0, ers.log()[-4000:]
    assert time.monotonic() - started < 20
    log = ers.log()
    assert "closing agent 'my_coach' did not finish within 5 s" in log, log[-4000:]
    assert "Application shutdown complete" in log


def test_an_agent_module_missing_a_dependency_is_told_apart_from_a_wrong_path(
    tmp_path: Path,
) -> None:
    """my_agents/coach.py was found and imported a library ERS's environment lacks: the
    refusal said it could not import 'my_agents.coach' and to put its folder on PYTHONPATH
    or fix the module path, which the operator had done already."""
    (tmp_path / "my_agents").mkdir()
    (tmp_path / "my_agents" / "__init__.py").write_text("")
    (tmp_path / "my_agents" / "coach.py").write_text("import llm_sdk_not_installed\n" + COACH)
    agents = {**BUILT_IN, "my_coach": {"kind": "python", "factory": "my_agents.coach:make"}}
    config = settings_file(tmp_path / "ers.yaml", agents, {"workout": "my_coach"})
    result = serve(
        tmp_path,
        "--port",
        str(free_port()),
        ERS_CONFIG=str(config),
        PYTHONPATH=str(tmp_path),
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        "ers: invalid setting 'agents.my_coach.factory': 'my_agents.coach' imports "
        "'llm_sdk_not_installed', which ERS's environment does not have; install the package "
        "that provides it into that environment"
    ), line
    assert sys.executable in line
    assert "PYTHONPATH" not in line and "fix the module path" not in line


REMOTE = {"kind": "http", "url": "http://127.0.0.1:8600/chat"}


@pytest.mark.parametrize(
    ("helper", "expected"),
    [
        (
            {**REMOTE, "url": "127.0.0.1:8600/chat"},
            "'agents.helper.url': Input should be a valid URL, relative URL without a base; "
            "write the whole URL with its scheme, e.g. http://127.0.0.1:8600/chat",
        ),
        (
            {**REMOTE, "url": "localhost:8600/chat"},
            "'agents.helper.url': URL scheme should be 'http' or 'https'; write the whole URL "
            "with its scheme, e.g. http://127.0.0.1:8600/chat",
        ),
        (
            {**REMOTE, "fallbacks": "workout"},
            "'agents.helper.fallbacks': not a list; write the agents' names as one, e.g. [workout]",
        ),
        (
            {"kind": "http"},
            "'agents.helper.url': missing; kind http needs url, the agent's address, e.g. "
            "http://127.0.0.1:8600/chat",
        ),
        (
            {"kind": "python"},
            "'agents.helper.factory': missing; kind python needs factory, package.module:factory "
            "or the name of an entry point",
        ),
        (
            "http://127.0.0.1:8600/chat",
            "'agents.helper': a mapping with kind: python (and factory) or kind: http (and url)",
        ),
        (
            {**REMOTE, "fallback": ["workout"]},
            "'agents.helper.fallback': unknown key; did you mean fallbacks?",
        ),
        (
            {**REMOTE, "timout_s": 3},
            "'agents.helper.timout_s': unknown key; did you mean timeout_s?",
        ),
        (
            {**REMOTE, "factory": "my_agents.coach:make"},
            "'agents.helper.factory': unknown key; check its spelling (kind http takes "
            "auth_file, auth_header, contract, fallbacks, max_concurrent_calls, "
            "max_connections, max_wait_s, model, timeout_s, url)",
        ),
        (
            {"kind": "python", "factory": f"{HELPERS}:coach", "max_wait_s": 0.5},
            "'agents.helper.max_wait_s': a Python agent waits for a slot only with "
            "max_concurrent_calls, the slots; set it too, or remove max_wait_s",
        ),
    ],
)
def test_a_mistyped_agent_setting_is_refused_with_what_to_write(
    tmp_path: Path, helper: Any, expected: str
) -> None:
    """pydantic's own words came through alone: 'Input should be a valid tuple' for
    `fallbacks: workout`, 'relative URL without a base' for a URL without http://, 'Field
    required', and 'Input should be a valid dictionary' for an agent written as its URL. A
    Python agent's max_wait_s without max_concurrent_calls was taken and did nothing."""
    config = settings_file(tmp_path / "ers.yaml", {**BUILT_IN, "helper": helper}, {})
    result = serve(
        tmp_path, "--port", str(free_port()), ERS_CONFIG=str(config), PYTHONPATH=str(ROOT)
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == f"ers: invalid setting {expected}", line


def test_an_auth_file_not_found_is_named_where_it_was_looked_for(tmp_path: Path) -> None:
    """auth_file written relative to the settings file's folder is read from the folder
    `ers serve` runs in: the refusal named only the relative path, so the operator looked
    beside ers.yaml, found the file there, and could not tell what was wrong."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "helper-auth").write_text("Bearer s3cret\n")
    helper = {**REMOTE, "auth_file": "helper-auth"}
    config = settings_file(tmp_path / "conf" / "ers.yaml", {**BUILT_IN, "helper": helper}, {})
    result = serve(tmp_path, "--port", str(free_port()), ERS_CONFIG=str(config))
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line == (
        "ers: invalid setting 'agents.helper.auth_file': cannot read helper-auth "
        f"({tmp_path / 'helper-auth'}; a relative path is read from the folder ers serve "
        "runs in): No such file or directory; write the whole value of its Authorization "
        "header there"
    ), line
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize(
    ("factory", "fault"),
    [
        # A `def handle` (the README asks for `async def`) passed the start-up check, and
        # then every chat failed with "TypeError: object AgentReply can't be used in
        # 'await' expression", opening the agent's breaker: found only by the users.
        (
            "sync_handle",
            "returned an agent whose handle is a plain def; "
            "write it as async def handle(self, request)",
        ),
        # `guidance = "Rest today.",` (a stray comma: a tuple) passed the start; when the
        # agent failed, its guidance became a reply that was no text, which failed the
        # router's own guard: every chat, of every intent, got the router's recovering
        # message.
        (
            "tuple_guidance",
            "returned an agent whose guidance is a tuple, not text; "
            "make it a string (a trailing comma makes a tuple), or leave it out",
        ),
    ],
)
def test_an_agent_the_guard_cannot_run_stops_the_start(
    tmp_path: Path, factory: str, fault: str
) -> None:
    agents = {**BUILT_IN, "my_coach": {"kind": "python", "factory": f"{HELPERS}:{factory}"}}
    config = settings_file(tmp_path / "ers.yaml", agents, {"workout": "my_coach"})
    result = serve(
        tmp_path, "--port", str(free_port()), ERS_CONFIG=str(config), PYTHONPATH=str(ROOT)
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"ers: invalid setting 'agents.my_coach.factory': '{HELPERS}:{factory}' {fault}"
    ), result.stderr


def serve_coach(tmp_path: Path, factory: str, **env: str) -> ErsProcess:
    """``ers serve`` with my_coach, built by ``factory`` of the test helpers, answering
    workout questions, workout its fallback, each attempt's limit 1 s; ``env`` added."""
    agents = {
        **BUILT_IN,
        "my_coach": {"kind": "python", "factory": f"{HELPERS}:{factory}", "fallbacks": ["workout"]},
    }
    config = settings_file(tmp_path / "ers.yaml", agents, {"workout": "my_coach"})
    env |= {"ERS_CONFIG": str(config), "PYTHONPATH": str(ROOT), "ERS_AGENT_TIMEOUT_S": "1"}
    return start_ers(tmp_path / "ers", env=env)


def test_the_responders_restart_closes_the_instance_it_replaces(tmp_path: Path) -> None:
    """restart_agent put a new instance from the factory in place and dropped the old one
    without its aclose: each restart of an agent holding connections (an LLM client) left
    them open for the life of the process; only the last instance was closed at shutdown.
    The old one is closed once the calls begun on it have had their time."""
    close_log = tmp_path / "closed.log"
    ers = serve_coach(tmp_path, "broken_closing", OWN_AGENT_CLOSE_LOG=str(close_log))
    try:
        with httpx.Client(base_url=ers.url, timeout=30) as http:
            reply = http.post("/chat", json={"message": "make me a workout plan", "userId": "u"})
            assert reply.status_code == 200, reply.text
            restarted = restart_finished(http, "my_coach")
            assert restarted is not None and restarted["data"]["result"] == "success", restarted
            # Closed once the calls begun on it have had their time (the guard's budget,
            # 1.6 s here), before the service stops; polled for 30 s at most.
            deadline = time.monotonic() + 30
            while not close_log.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            closed_while_running = close_log.read_text() if close_log.exists() else ""
    finally:
        assert ers.stop() == 0, ers.log()[-4000:]
    assert closed_while_running == "closed instance 1\n"
    assert close_log.read_text() == "closed instance 1\nclosed instance 2\n"


def restart_finished(http: httpx.Client, agent: str) -> dict[str, Any] | None:
    """The timeline entry of the responder's restart_agent of ``agent`` once it has finished
    (polled for 30 s at most), or None."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listed = http.get("/api/emergency/incidents", params={"component": agent})
        for incident in listed.json()["incidents"]:
            timeline = http.get(f"/api/emergency/incidents/{incident['id']}").json()
            for entry in timeline["timeline"]:
                if (
                    entry["kind"] == "action_finished"
                    and entry["data"].get("action") == "restart_agent"
                ):
                    return dict(entry)
        time.sleep(0.2)
    return None


def test_the_service_answers_while_a_restarted_agents_factory_is_building(
    tmp_path: Path,
) -> None:
    """restart_agent called the agent's factory on the event loop: a factory that loads a
    model or opens a connection for seconds stalled every request of the service, /livez
    too, until it returned. It builds in a thread, and the service answers meanwhile."""
    flags = tmp_path / "flags"
    flags.mkdir()
    ers = serve_coach(tmp_path, "slow_at_restart", OWN_AGENT_RESTART_DIR=str(flags))
    try:
        with httpx.Client(base_url=ers.url, timeout=60) as http:
            failed = http.post("/chat", json={"message": "make me a workout plan", "userId": "u"})
            assert failed.status_code == 200, failed.text  # its incident restarts my_coach
            deadline = time.monotonic() + 30
            while not (flags / "building").exists():
                assert time.monotonic() < deadline, ers.log()[-3000:]
                time.sleep(0.05)

            alive = http.get("/livez")
            other = http.post("/chat", json={"message": "what should I eat?", "userId": "v"})
            answered_before_built = not (flags / "returned").exists()
            (flags / "go").touch()
            restarted = restart_finished(http, "my_coach")
    finally:
        assert ers.stop() == 0, ers.log()[-4000:]
    assert alive.status_code == 200, alive.text
    assert other.status_code == 200 and other.json()["agent"] == "nutrition", other.text
    assert answered_before_built, (flags / "returned").read_text()
    assert (flags / "returned").read_text() == "let go"
    assert restarted is not None and restarted["data"]["result"] == "success", restarted


def test_an_agent_that_catches_its_cut_fails_itself_not_the_router(tmp_path: Path) -> None:
    """An agent that caught the cancellation of its call and went on was cut by the router's
    limit instead: the router's timeout isolated the router, so every chat of every user got
    the generic "recovering" answer for two minutes, while the agent's breaker counted
    nothing and its fallback was never asked."""
    agents = {
        **BUILT_IN,
        "my_coach": {
            "kind": "python",
            "factory": f"{HELPERS}:catches_its_cut_once",
            "fallbacks": ["workout"],
        },
    }
    config = settings_file(tmp_path / "ers.yaml", agents, {"workout": "my_coach"})
    env = {"ERS_CONFIG": str(config), "PYTHONPATH": str(ROOT), "ERS_AGENT_TIMEOUT_S": "1"}
    ers = start_ers(tmp_path / "ers", env=env)
    try:
        with httpx.Client(base_url=ers.url, timeout=60) as http:
            cut = http.post("/chat", json={"message": "make me a workout plan", "userId": "u"})
            after = http.post("/chat", json={"message": "what should I eat?", "userId": "v"})
            breakers = http.get("/api/emergency/circuit-breakers").json()["breakers"]
            deadline = time.monotonic() + 15  # spans are classified off the chat's path
            while not (incidents := http.get("/api/emergency/incidents").json()["incidents"]):
                assert time.monotonic() < deadline, "no incident was opened"
                time.sleep(0.2)
    finally:
        assert ers.stop() == 0, ers.log()[-4000:]
    assert cut.status_code == 200, cut.text
    body = cut.json()
    assert body["agent"] == "my_coach" and body["recovery"]["via"] == "workout", body
    assert after.status_code == 200 and after.json()["agent"] == "nutrition", after.text
    assert after.json()["emergency"] is False, after.text
    assert breakers["router"]["state"] == "closed", breakers["router"]
    assert breakers["router"]["failureCount"] == 0, breakers["router"]
    assert breakers["my_coach"]["failureCount"] == 1, breakers["my_coach"]
    assert {i["component"] for i in incidents} == {"my_coach"}, incidents
    assert incidents[0]["exceptionType"] == "TimeoutError", incidents[0]


@pytest.mark.parametrize("factory", ["uncancellable", "thread_stuck"])
def test_a_sigterm_ends_the_service_though_an_agent_never_lets_its_call_go(
    tmp_path: Path, factory: str
) -> None:
    """An agent that catches the cancellation of its call holds its chat, as the README says;
    it held the process too: uvicorn's shutdown ended, and then Python's own clean-up waited
    for the chat's task for ever (or for the thread it handed a call to, which cancelling
    cannot stop), so a supervisor's SIGTERM never stopped ERS."""
    agents = {**BUILT_IN, "stuck": {"kind": "python", "factory": f"{HELPERS}:{factory}"}}
    config = settings_file(tmp_path / "ers.yaml", agents, {"workout": "stuck"})
    caught = tmp_path / "cancel-caught"
    env = {
        "ERS_CONFIG": str(config),
        "PYTHONPATH": str(ROOT),
        "ERS_AGENT_TIMEOUT_S": "1",
        "ERS_TEST_CANCEL_CAUGHT": str(caught),
    }
    ers = start_ers(tmp_path / "ers", env=env)

    def ask() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{ers.url}/chat", json={"message": "workout plan"}, timeout=60)

    threading.Thread(target=ask, daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        while not caught.exists():  # the call is under way (and was cut, and went on)
            assert time.monotonic() < deadline, ers.log()[-3000:]
            time.sleep(0.1)
        ers.process.send_signal(signal.SIGTERM)
        code = ers.process.wait(timeout=60)
    finally:
        ers.stop(signal.SIGKILL)
    assert code == 0, ers.log()[-3000:]
    said = "did not end when cancelled" if factory == "uncancellable" else "threads of asyncio"
    assert said in ers.log(), ers.log()[-3000:]


def test_a_chat_the_services_stop_cuts_short_is_a_503_that_says_so(tmp_path: Path) -> None:
    """An agent with a long time limit (an LLM's) still at work when ``ers serve`` stops and
    its grace for requests (10 s) runs out. Before: a bare text 500 and a traceback in the
    log."""
    agents = {
        **BUILT_IN,
        "slow_coach": {"kind": "python", "factory": f"{HELPERS}:gated", "timeout_s": 120},
    }
    config = settings_file(tmp_path / "ers.yaml", agents, {"workout": "slow_coach"})
    ers = start_ers(tmp_path / "ers", env={"ERS_CONFIG": str(config), "PYTHONPATH": str(ROOT)})
    reply: dict[str, Any] = {}

    def ask() -> None:
        chat = {"message": "make me a workout plan", "userId": "u"}
        try:
            reply["response"] = httpx.post(f"{ers.url}/chat", json=chat, timeout=60)
        except httpx.HTTPError as exc:
            reply["error"] = exc

    sender = threading.Thread(target=ask)
    sender.start()
    time.sleep(1)  # the coach holds the call
    assert ers.stop(signal.SIGTERM, timeout=60) == 0
    sender.join(timeout=30)
    answered = reply.get("response")
    assert answered is not None, reply
    assert answered.status_code == 503, answered.text
    assert answered.headers["Retry-After"] == "5"
    detail = answered.json()["detail"]
    assert detail.startswith("the service stopped before this chat was answered"), detail
    assert "Idempotency-Key" in detail
    assert "Exception in ASGI application" not in ers.log(), ers.log()[-3000:]
