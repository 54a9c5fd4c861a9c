"""A remote agent that does not answer in time, through the whole service: `ers serve` over
HTTP with the example agent (a real uvicorn process) answering workout questions slowly.
The agent's own guard decides: its breaker counts the timeout and its fallback answers;
the router, whose guard bounds the whole chat, is not blamed for the agent's slowness."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_remote_agent import ask_for_a_workout, start_routed_ers
from tests.e2e.test_remote_agent_replies import example_agent  # noqa: F401 (a fixture)
from tests.example_agent import ExampleAgent

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "helper",
    [
        pytest.param({}, id="agent_timeout_s"),
        pytest.param({"timeout_s": 1.5}, id="its-own-longer-timeout_s"),
    ],
)
def test_a_remote_agent_too_slow_for_its_timeout_falls_back_and_the_router_is_not_blamed(
    tmp_path: Path,
    example_agent: ExampleAgent,  # noqa: F811
    helper: dict[str, Any],
) -> None:
    """The router's guard had agent_timeout_s as its own limit, the same as (or shorter
    than) the agent's: it cut the chat as the agent's call ran out, so the router counted
    the timeout, the responder isolated the router, and every chat of every intent got the
    router's "recovering from a fault", while the agent's breaker counted nothing and its
    fallback never answered."""
    example_agent.forget()
    ers = start_routed_ers(tmp_path, example_agent, env={"ERS_AGENT_TIMEOUT_S": "1"}, **helper)
    try:
        example_agent.fail_next("slow", count=100, delayS=4)
        body = ask_for_a_workout(ers, "ann")
        breakers = httpx.get(f"{ers.url}/api/emergency/circuit-breakers", timeout=10).json()
        nutrition = httpx.post(
            f"{ers.url}/chat", json={"message": "plan my meals", "userId": "bob"}, timeout=30
        ).json()
    finally:
        assert ers.stop() == 0, ers.log()[-4000:]
    assert body["emergency"] is True, body
    assert body["recovery"]["fallback"] == "agent" and body["recovery"]["via"] == "workout", body
    helper_breaker = breakers["breakers"]["helper"]
    assert helper_breaker["lastError"].startswith("TimeoutError"), helper_breaker
    router = breakers["breakers"]["router"]
    assert router["failureCount"] == 0 and router["lastError"] is None, router
    assert router["state"] == "closed", router
    # Other intents are not touched: the router answers them itself here (no nutrition
    # agent in this team), not with its recovering message.
    assert nutrition["agent"] == "router" and nutrition["emergency"] is False, nutrition


def test_calls_within_an_agents_own_longer_timeout_are_not_slow_calls_that_isolate_it(
    tmp_path: Path,
    example_agent: ExampleAgent,  # noqa: F811
) -> None:
    """An agent given a longer timeout_s (an LLM taking seconds, as the README's
    `timeout_s: 10`) was still judged slow from breaker_slow_call_s: once a window of calls
    had all answered past that line, well within the agent's own limit, its breaker opened,
    the responder isolated it, and every half-open trial, as slow, opened it again."""
    example_agent.forget()
    env = {"ERS_AGENT_TIMEOUT_S": "1", "ERS_BREAKER_SLOW_CALL_S": "1"}
    ers = start_routed_ers(tmp_path, example_agent, env=env, timeout_s=3)
    try:
        example_agent.fail_next("slow", count=100, delayS=1.2)
        with ThreadPoolExecutor(max_workers=10) as pool:
            replies = list(pool.map(lambda n: ask_for_a_workout(ers, f"user-{n}"), range(10)))
        helper = httpx.get(f"{ers.url}/api/emergency/circuit-breakers/helper", timeout=10).json()
        after = ask_for_a_workout(ers, "ann")
        incidents = httpx.get(f"{ers.url}/api/emergency/incidents", timeout=10).json()
    finally:
        assert ers.stop() == 0, ers.log()[-4000:]
    assert all(reply["emergency"] is False for reply in replies), replies
    assert helper["state"] == "closed", helper
    assert helper["bufferedCalls"] == 10 and helper["slowCallRate"] == 0, helper
    assert after["emergency"] is False, after
    assert incidents["total"] == 0, incidents
