"""What a remote agent answers, through the whole service: `ers serve` over HTTP with the
example agent (a real uvicorn process) answering workout questions. A reply that holds no
answer the service can store and show is the agent's failure (`bad_response`): its
fallback answers, never a 500 of the service and never an empty reply called a success."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
