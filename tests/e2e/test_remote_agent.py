"""A remote agent through the whole service: `ers serve` over HTTP with an `agents:` settings
file naming the example agent (a real uvicorn process). The service lists the agent's
breaker, its health probe reaches the agent with the caller's trace and the auth header,
rejected credentials refuse a reset without showing the secret, and the secret is in none of
the service's replies or logs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ErsProcess, start_ers
from tests.example_agent import ExampleAgent, running_example_agent

pytest.importorskip("service.agents.config")

pytestmark = pytest.mark.integration

SECRET = "e2e-secret-5d2b81"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def example_agent(tmp_path: Path) -> Iterator[ExampleAgent]:
    with running_example_agent(tmp_path / "example", SECRET) as agent:
        yield agent


@pytest.fixture
def ers(tmp_path: Path, example_agent: ExampleAgent) -> Iterator[ErsProcess]:
    auth_file = tmp_path / "helper-auth"
    auth_file.write_text(f"Bearer {SECRET}\n")
    config = tmp_path / "ers.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "agents": {
                    "helper": {
                        "kind": "http",
                        "url": f"{example_agent.url}/chat",
                        "contract": "ers",
                        "auth_file": str(auth_file),
                        "timeout_s": 2,
                    }
                }
            }
        )
    )
    process = start_ers(tmp_path / "ers", env={"ERS_CONFIG": str(config)})
    try:
        yield process
    finally:
        process.stop()


def force_open(ers: ErsProcess) -> None:
    reply = httpx.post(
        f"{ers.url}/api/emergency/circuit-breaker/helper/force-open",
        json={"reason": "checking the probe"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text


def reset(ers: ErsProcess) -> httpx.Response:
    return httpx.post(
        f"{ers.url}/api/emergency/circuit-breaker/helper/reset",
        json={},
        headers={"traceparent": TRACEPARENT},
        timeout=20,
    )


def test_a_remote_agent_from_the_settings_is_guarded_traced_and_keeps_its_secret(
    ers: ErsProcess, example_agent: ExampleAgent
) -> None:
    breakers = httpx.get(f"{ers.url}/api/emergency/circuit-breakers", timeout=10).json()
    assert breakers["breakers"]["helper"]["state"] == "closed"

    # A reset's health probe calls the agent now, within the caller's trace.
    force_open(ers)
    reply = reset(ers)
    assert reply.status_code == 200, reply.text
    (call,) = example_agent.calls()
    assert call["authorized"] is True
    assert call["traceparent"].split("-")[1] == TRACE_ID

    # Rejected credentials: the probe fails, the reset is refused and says why.
    force_open(ers)
    example_agent.fail_next("auth", count=1)
    refused = reset(ers)
    assert refused.status_code == 409
    assert "credentials rejected: agent 'helper'" in refused.text
    assert len(example_agent.calls()) == 2  # one call per probe

    assert SECRET not in reply.text + refused.text
    assert ers.stop() == 0
    assert SECRET not in ers.log()


def start_routed_ers(
    tmp_path: Path, example_agent: ExampleAgent, env: dict[str, str] | None = None, **spec: Any
) -> ErsProcess:
    """ERS with workout questions routed to the example agent as 'helper' (its settings
    ``spec`` added, ``env`` added to ERS's environment)."""
    auth_file = tmp_path / "helper-auth"
    auth_file.write_text(f"Bearer {SECRET}\n")
    config = tmp_path / "routed.yaml"
    helper = {
        "kind": "http",
        "url": f"{example_agent.url}/chat",
        "auth_file": str(auth_file),
        "fallbacks": ["workout"],
        **spec,
    }
    config.write_text(
        yaml.safe_dump(
            {
                "agents": {"workout": {"kind": "python", "factory": "workout"}, "helper": helper},
                "agent_routes": {"workout": "helper"},
            }
        )
    )
    return start_ers(tmp_path / "routed", env={"ERS_CONFIG": str(config), **(env or {})})


def ask_for_a_workout(ers: ErsProcess, user: str) -> dict[str, Any]:
    reply = httpx.post(
        f"{ers.url}/chat", json={"message": "make me a workout plan", "userId": user}, timeout=20
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    assert body["agent"] == "helper"
    return body


def test_chats_through_a_remote_agent_write_no_log_line_per_call(
    tmp_path: Path, example_agent: ExampleAgent
) -> None:
    """The access log is off by default; the agent's HTTP client logged every call at INFO
    (its URL and status), one line per chat, which the operator never asked for."""
    ers = start_routed_ers(tmp_path, example_agent)
    try:
        for user in ("ann", "bob", "cid"):
            assert ask_for_a_workout(ers, user)["emergency"] is False
    finally:
        assert ers.stop() == 0
    assert len(example_agent.calls()) == 3
    log = ers.log()
    assert "ERS ready" in log
    assert example_agent.url not in log


def ers_cli(ers: ErsProcess, *args: str) -> str:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("ers")), "--url", ers.url, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_rate_limited_agent_shows_its_cooldown_in_the_breakers_and_the_status(
    tmp_path: Path, example_agent: ExampleAgent
) -> None:
    """A 429 with a Retry-After longer than a call can wait leaves the agent alone for that
    long with its breaker closed: the breakers and the status said only "closed", so nothing
    told the operator why no call reached it."""
    ers = start_routed_ers(tmp_path, example_agent)
    try:
        example_agent.fail_next("rate_limit", count=1, retryAfter="600")
        assert ask_for_a_workout(ers, "ann")["emergency"] is True
        calls_before = len(example_agent.calls())
        assert ask_for_a_workout(ers, "bob")["emergency"] is True
        assert len(example_agent.calls()) == calls_before  # left alone

        breakers = httpx.get(f"{ers.url}/api/emergency/circuit-breakers", timeout=10).json()
        helper = breakers["breakers"]["helper"]
        assert helper["state"] == "closed"
        assert 0 < helper["cooldownRemainingS"] <= 600
        assert breakers["breakers"]["workout"]["cooldownRemainingS"] is None
        assert breakers["totals"]["cooling_down"] == 1
        one = httpx.get(f"{ers.url}/api/emergency/circuit-breakers/helper", timeout=10).json()
        assert 0 < one["cooldownRemainingS"] <= 600

        table = ers_cli(ers, "breakers", "list")
        (row,) = [line for line in table.splitlines() if line.startswith("helper")]
        assert "closed, cooling down" in row
        assert "rate limited: called again in" in row
        assert "1 cooling down" in table
        status = ers_cli(ers, "status")
        assert "1 cooling down" in status

        # A reset probes the agent; it answers, so the cooldown ends and chats reach it.
        said = ers_cli(ers, "breakers", "reset", "helper")
        assert "its rate-limit cooldown is over" in said
        assert ask_for_a_workout(ers, "cid")["emergency"] is False
        assert len(example_agent.calls()) == calls_before + 2  # the probe and the chat
        assert "cooling down" not in ers_cli(ers, "breakers", "list")
    finally:
        assert ers.stop() == 0


def test_a_reset_whose_probe_is_still_turned_away_keeps_the_cooldown(
    tmp_path: Path, example_agent: ExampleAgent
) -> None:
    """A reset ended the cooldown whatever its probe met: the agent answered the probe
    with another 429 (or could not be reached at all), and the reply still said 'its
    rate-limit cooldown is over' while the chats went back to an agent turning them away."""
    ers = start_routed_ers(tmp_path, example_agent)
    try:
        example_agent.fail_next("rate_limit", count=2, retryAfter="600")
        assert ask_for_a_workout(ers, "ann")["emergency"] is True
        url = f"{ers.url}/api/emergency/circuit-breaker/helper/reset"
        refused = httpx.post(url, json={}, timeout=30)
        assert refused.status_code == 409, refused.text
        said = refused.json()["detail"]
        assert "cooling down" in said and "health probe still fails" in said
        assert "429" in said and "reset with force" in said
        helper = httpx.get(f"{ers.url}/api/emergency/circuit-breakers/helper", timeout=10)
        assert helper.json()["cooldownRemainingS"] > 0  # still left alone
        calls = len(example_agent.calls())
        assert ask_for_a_workout(ers, "bob")["emergency"] is True
        assert len(example_agent.calls()) == calls

        forced = httpx.post(url, json={"force": True}, timeout=30)
        assert forced.status_code == 200, forced.text
        assert "its rate-limit cooldown is over" in forced.json()["message"]
        assert ask_for_a_workout(ers, "cid")["emergency"] is False
    finally:
        assert ers.stop() == 0


def test_a_restart_keeps_the_cooldown_a_rate_limited_agent_asked_for(
    tmp_path: Path, example_agent: ExampleAgent
) -> None:
    """The cooldown lived in memory only: a restart of ERS called an agent that had asked
    to be left alone for ten minutes again at once."""
    ers = start_routed_ers(tmp_path, example_agent)
    try:
        example_agent.fail_next("rate_limit", count=1, retryAfter="600")
        assert ask_for_a_workout(ers, "ann")["emergency"] is True
    finally:
        assert ers.stop() == 0
    calls = len(example_agent.calls())

    again = start_routed_ers(tmp_path, example_agent)
    try:
        assert ask_for_a_workout(again, "bob")["emergency"] is True
        assert len(example_agent.calls()) == calls  # still left alone
        helper = httpx.get(f"{again.url}/api/emergency/circuit-breakers/helper", timeout=10)
        assert 0 < helper.json()["cooldownRemainingS"] <= 600
    finally:
        assert again.stop() == 0
    assert "agent 'helper' left alone for" in again.log()


def test_a_burst_beyond_the_connection_pool_is_turned_away_not_counted_against_the_agent(
    tmp_path: Path, example_agent: ExampleAgent
) -> None:
    """Calls beyond max_connections queued for a connection; the waits ran past timeout_s
    and counted as the agent's failures, so a healthy agent's breaker opened and the
    responder isolated it. The pool's size is now the agent's bulkhead by default."""
    ers = start_routed_ers(tmp_path, example_agent, max_connections=2, timeout_s=2)
    try:
        example_agent.fail_next("slow", count=100, delayS=0.5)
        with ThreadPoolExecutor(max_workers=12) as pool:
            replies = list(pool.map(lambda n: ask_for_a_workout(ers, f"user-{n}"), range(12)))
        helper = httpx.get(f"{ers.url}/api/emergency/circuit-breakers/helper", timeout=10).json()
        incidents = httpx.get(f"{ers.url}/api/emergency/incidents", timeout=10).json()
        metrics = httpx.get(f"{ers.url}/metrics", timeout=10).text
    finally:
        assert ers.stop() == 0
    assert any(not reply["emergency"] for reply in replies)  # the agent answered some
    turned_away = [reply for reply in replies if reply["emergency"]]
    assert turned_away, "12 calls at once on 2 connections: some must be turned away"
    assert all(reply["recovery"]["via"] == "workout" for reply in turned_away)
    assert helper["state"] == "closed"
    assert helper["failureCount"] == 0 and helper["lastError"] is None
    rejected = [
        line
        for line in metrics.splitlines()
        if line.startswith("ers_agent_calls_total{")
        and 'agent="helper"' in line
        and 'outcome="rejected"' in line
    ]
    assert len(rejected) == 1 and float(rejected[0].rsplit(" ", 1)[1]) == len(turned_away)
    assert incidents["total"] == 0


def test_an_agent_cooling_down_degrades_the_breakers_health_check_until_it_is_back(
    tmp_path: Path, example_agent: ExampleAgent
) -> None:
    """For the whole of a 429's Retry-After no call reaches the agent and every chat of its
    intent gets a fallback, yet the health report said "healthy", "every breaker closed",
    and the system state "normal", as if nothing kept the agent out: an isolated breaker
    says "not closed" there."""
    ers = start_routed_ers(tmp_path, example_agent)
    try:
        health = f"{ers.url}/api/emergency/health"
        example_agent.fail_next("rate_limit", count=1, retryAfter="600")
        assert ask_for_a_workout(ers, "ann")["emergency"] is True
        cooling = httpx.get(health, timeout=30)
        said = ers_cli(ers, "breakers", "reset", "helper")
        assert "its rate-limit cooldown is over" in said
        after = httpx.get(health, timeout=30).json()
        back = after["checks"]["breakers"]
    finally:
        assert ers.stop() == 0
    assert cooling.status_code == 200, cooling.text  # degraded, not unhealthy
    report = cooling.json()
    assert report["overall"] == "degraded", report
    # ... and so is the system state (before: normal throughout), until the agent is back.
    assert report["systemState"] == "degraded" and after["systemState"] == "recovery", after
    breakers = report["checks"]["breakers"]
    assert breakers["status"] == "degraded", breakers
    assert breakers["reason"].startswith("cooling down (rate limited): helper"), breakers
    assert 0 < breakers["figures"]["coolingDown"]["helper"] <= 600, breakers
    assert back["status"] == "healthy" and back["figures"]["coolingDown"] == {}, back
