"""What a remote agent answers, through the whole service: `ers serve` over HTTP with the
example agent (a real uvicorn process) answering workout questions. A reply that holds no
answer the service can store and show is the agent's failure (`bad_response`): its
fallback answers, never a 500 of the service and never an empty reply called a success."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ErsProcess
from tests.e2e.test_remote_agent import SECRET, ask_for_a_workout, start_routed_ers
from tests.example_agent import ExampleAgent, running_example_agent

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def example_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleAgent]:
    with running_example_agent(tmp_path_factory.mktemp("example"), SECRET) as agent:
        yield agent


@pytest.fixture(scope="module")
def ers(
    tmp_path_factory: pytest.TempPathFactory, example_agent: ExampleAgent
) -> Iterator[ErsProcess]:
    process = start_routed_ers(tmp_path_factory.mktemp("ers"), example_agent)
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log()[-4000:]


@pytest.fixture
def helper(ers: ErsProcess, example_agent: ExampleAgent) -> ErsProcess:
    example_agent.forget()
    reply = httpx.post(
        f"{ers.url}/api/emergency/circuit-breaker/helper/reset", json={"force": True}, timeout=10
    )
    assert reply.status_code == 200, reply.text
    return ers


def test_a_reply_holding_half_a_surrogate_pair_falls_back_instead_of_a_500(
    helper: ErsProcess, example_agent: ExampleAgent
) -> None:
    """The JSON escape of a lone surrogate parses into a str that cannot be encoded: the
    agent's call passed, and the turn's write failed with a 500 (UnicodeEncodeError) after
    the agent had answered."""
    example_agent.fail_next("lone_surrogate")
    body = ask_for_a_workout(helper, "ann")
    assert body["emergency"] is True, body
    assert body["recovery"]["via"] == "workout"
    breaker = httpx.get(f"{helper.url}/api/emergency/circuit-breakers/helper", timeout=10).json()
    assert "lone surrogate" in breaker["lastError"], breaker
    # The next turn goes through as before.
    assert ask_for_a_workout(helper, "ann")["emergency"] is False


@pytest.mark.parametrize("contract", ["ers", "openai"])
def test_an_empty_answer_falls_back_and_fails_the_system_test(
    tmp_path: Path, example_agent: ExampleAgent, contract: str
) -> None:
    """An empty (or blank) answer was taken as the agent's reply: the user got nothing
    with "success": true and "emergency": false, and the system test's canary called it
    passed ("answered (0 characters)")."""
    spec = {"contract": contract, "model": "tiny"} if contract == "openai" else {}
    if contract == "openai":
        spec["url"] = example_agent.url
    ers = start_routed_ers(tmp_path, example_agent, **spec)
    try:
        example_agent.fail_next("empty")
        body = ask_for_a_workout(ers, "ann")
        example_agent.fail_next("empty")
        tested = httpx.post(f"{ers.url}/api/emergency/test-system", timeout=30)
        breaker = httpx.get(f"{ers.url}/api/emergency/circuit-breakers/helper", timeout=10)
    finally:
        assert ers.stop() == 0, ers.log()[-4000:]
    assert body["emergency"] is True, body
    assert body["recovery"]["via"] == "workout"
    assert body["response"].strip()
    assert "empty reply" in breaker.json()["lastError"], breaker.text
    report = tested.json()
    assert report["passed"] is False, report
    (step,) = [step for step in report["steps"] if step["step"] == "agent:helper"]
    assert step["passed"] is False and "empty reply" in step["detail"], step


# Each mode of the example agent: the failure kind, the incident's rule, and whether the
# agent's breaker counted it.
NO_ANSWER = {
    "truncated": ("truncated", "remote-truncated", False),
    "content_filter": ("content_filter", "remote-content-filter", False),
    "refusal": ("refusal", "remote-refusal", False),
    "tool_calls": ("tool_calls", "remote-tool-calls", True),
    "error_object": ("bad_response", "bad-response", True),
}


def helper_incidents(ers: ErsProcess, rules: set[str]) -> dict[str, dict[str, Any]]:
    """The open incidents of agent helper by rule, once each of ``rules`` has one (15 s at
    most: they are classified off the request path)."""
    deadline = time.monotonic() + 15
    while True:
        listed = httpx.get(f"{ers.url}/api/emergency/incidents", timeout=10).json()
        found = {
            i["classification"]["rule"]: i
            for i in listed["incidents"]
            if i["component"] == "helper"
        }
        if rules <= found.keys() or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def failure_kinds(spans: list[dict[str, Any]]) -> set[str]:
    """The ers.failure.kind of each agent.helper span of a kept trace."""
    found = set()
    for span in spans:
        if span["name"] == "agent.helper":
            found.add(span["attributes"].get("ers.failure.kind"))
        found |= failure_kinds(span["children"])
    return found


def calls_counted(ers: ErsProcess) -> dict[str, float]:
    metrics = httpx.get(f"{ers.url}/metrics", timeout=10).text
    found = re.findall(r'ers_agent_calls_total\{agent="helper",outcome="(\w+)"\} (\S+)', metrics)
    return {outcome: float(value) for outcome, value in found if float(value)}


def test_openai_completions_without_an_answer_fall_back_each_as_its_kind(
    tmp_path: Path, example_agent: ExampleAgent
) -> None:
    """Through the whole service, an LLM agent's 200s that hold no answer: an answer cut off
    at the token limit went to the user as a whole one; a refusal, a content filter's finish
    and a tool call were bad_response breaker failures that named no cause; an error object
    in a 200 read as a reply without choices."""
    example_agent.forget()
    ers = start_routed_ers(
        tmp_path, example_agent, contract="openai", model="example", url=example_agent.url
    )
    try:
        bodies = {}
        for mode in NO_ANSWER:
            example_agent.fail_next(mode)
            bodies[mode] = ask_for_a_workout(ers, "ann")
        incidents = helper_incidents(ers, {rule for _, rule, _ in NO_ANSWER.values()})
        breaker = httpx.get(f"{ers.url}/api/emergency/circuit-breakers/helper", timeout=10)
        counted = calls_counted(ers)
        kept = {
            mode: httpx.get(f"{ers.url}/api/emergency/traces/{body['traceId']}", timeout=10)
            for mode, body in bodies.items()
        }
        answered = ask_for_a_workout(ers, "ann")
    finally:
        assert ers.stop() == 0, ers.log()[-4000:]

    assert [call["mode"] for call in example_agent.calls()] == [*NO_ANSWER, None]
    for mode, (kind, rule, _) in NO_ANSWER.items():
        body = bodies[mode]
        assert body["emergency"] is True and body["recovery"]["via"] == "workout", (mode, body)
        assert "squats, push-" not in body["response"]
        assert incidents[rule]["count"] == 1, (mode, incidents.keys())
        assert failure_kinds(kept[mode].json()["spans"]) == {kind}, mode
    assert "output token limit" in incidents["remote-truncated"]["message"]
    assert incidents["remote-truncated"]["classification"]["severity"] == "medium"
    assert "ERS sends no tools" in incidents["remote-tool-calls"]["message"]
    assert "error object (invalid_request_error)" in incidents["bad-response"]["message"]
    assert "sorry" not in incidents["remote-refusal"]["message"]
    # Only the tool call and the error object counted against the breaker.
    assert counted == {"refused": 3, "failure": 2}, counted
    assert breaker.json()["state"] == "closed"
    assert answered["emergency"] is False
