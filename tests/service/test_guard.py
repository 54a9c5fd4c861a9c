"""The guard around agent calls: span, breaker, timeout, retries, fallback and metrics."""

from __future__ import annotations

import asyncio
import gc
import re
import time
import types

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

from service.agents.base import AgentReply, AgentRequest
from service.chat.team import Team
from service.errors import AgentFailure, DependencyError, StoreUnavailable, UserInputError
from service.resilience.breaker import BreakerConfig, CircuitBreaker, ProbeOutcome
from service.resilience.fallback import FallbackPolicy, LastGoodAnswers
from service.resilience.guard import GuardedAgent
from service.resilience.guard_config import GuardConfig
from service.resilience.instruments import AgentInstruments
from telemetry.exception_events import EXCEPTION_BASES_ATTRIBUTE


class ScriptedAgent:
    """Answers or fails as its script says, one step per call."""

    def __init__(self, name: str, script: list[object]) -> None:
        self.name = name
        self.script = script
        self.calls = 0

    async def handle(self, request: AgentRequest) -> AgentReply:
        step = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        if isinstance(step, float):
            await asyncio.sleep(step)
            return AgentReply(f"slow answer {self.calls}", self.name)
        if isinstance(step, BaseException):
            raise step
        return AgentReply(f"{step} {self.calls}", self.name)


class Harness:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.tracer = tracer_provider.get_tracer("test")
        self.reader = InMemoryMetricReader()
        self.instruments = AgentInstruments.create(
            MeterProvider(metric_readers=[self.reader]).get_meter("test"), CollectorRegistry()
        )
        self.cache = LastGoodAnswers(100)

    def guard(self, agent: ScriptedAgent, **config: object) -> GuardedAgent:
        breaker = CircuitBreaker(
            agent.name, BreakerConfig(ignore_exceptions=(UserInputError,)), span_events=False
        )
        defaults = {"backoff_initial_s": 0.001, "timeout_s": 0.2, "total_budget_s": 2.0}
        return GuardedAgent(
            agent,
            breaker,
            FallbackPolicy(agent.name, "general guidance", self.cache),
            self.tracer,
            self.instruments,
            GuardConfig(**{**defaults, **config}),  # type: ignore[arg-type]
        )

    def counts(self) -> dict[tuple[str, ...], float]:
        found: dict[tuple[str, ...], float] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name not in ("ers_agent_calls", "ers_fallbacks"):
                        continue
                    for point in metric.data.data_points:
                        key = (metric.name, *(str(v) for v in point.attributes.values()))
                        found[key] = point.value
        return found


@pytest.fixture
def harness() -> Harness:
    return Harness()


REQUEST = AgentRequest("hello", "user-1")


async def test_success_is_one_span_and_one_success(harness: Harness) -> None:
    guard = harness.guard(ScriptedAgent("nutrition", ["fine"]))
    reply = await guard.handle(REQUEST)
    assert reply.content == "fine 1" and not reply.degraded
    (span,) = harness.spans.get_finished_spans()
    assert span.name == "agent.nutrition"
    assert span.attributes["ers.degraded"] is False
    assert span.status.status_code is StatusCode.UNSET
    assert harness.counts()[("ers_agent_calls", "nutrition", "success")] == 1


async def test_recoverable_errors_are_retried_with_events(harness: Harness) -> None:
    agent = ScriptedAgent("budget", [DependencyError("db down"), DependencyError("db down"), "ok"])
    reply = await harness.guard(agent).handle(REQUEST)
    assert reply.content == "ok 3" and not reply.degraded
    (span,) = harness.spans.get_finished_spans()
    assert span.attributes["ers.attempts"] == 3
    assert [e.name for e in span.events] == ["exception", "retry", "exception", "retry"]
    assert span.status.status_code is StatusCode.UNSET


async def test_non_recoverable_error_is_not_retried_and_degrades(harness: Harness) -> None:
    agent = ScriptedAgent("workout", [AgentFailure("crashed"), "ok"])
    reply = await harness.guard(agent).handle(REQUEST)
    assert agent.calls == 1
    assert reply.degraded and reply.fallback == "generic" and reply.success is False
    assert reply.content == "general guidance"
    (span,) = harness.spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["ers.degraded"] is True
    assert span.attributes["error.type"] == "AgentFailure"
    assert "ErsError" in span.attributes[EXCEPTION_BASES_ATTRIBUTE]
    counts = harness.counts()
    assert counts[("ers_agent_calls", "workout", "failure")] == 1
    assert counts[("ers_fallbacks", "workout", "generic")] == 1


async def test_timeout_cuts_a_hung_call(harness: Harness) -> None:
    agent = ScriptedAgent("nutrition", [5.0])
    reply = await harness.guard(agent, timeout_s=0.05, max_attempts=2).handle(REQUEST)
    assert reply.degraded
    assert agent.calls == 2
    (span,) = harness.spans.get_finished_spans()
    assert span.attributes["error.type"] == "TimeoutError"
    assert harness.counts()[("ers_agent_calls", "nutrition", "timeout")] == 1


async def test_total_budget_stops_retries(harness: Harness) -> None:
    agent = ScriptedAgent("budget", [0.5])
    guard = harness.guard(agent, timeout_s=0.1, max_attempts=10, total_budget_s=0.25)
    reply = await guard.handle(REQUEST)
    assert reply.degraded
    assert agent.calls <= 3


async def test_user_errors_pass_through_and_never_count(harness: Harness) -> None:
    agent = ScriptedAgent("budget", [UserInputError("amount must be positive")])
    guard = harness.guard(agent)
    for _ in range(10):
        with pytest.raises(UserInputError):
            await guard.handle(REQUEST)
    assert guard.breaker.state.value == "closed"
    assert guard.breaker.snapshot()["failureCount"] == 0
    assert harness.counts()[("ers_agent_calls", "budget", "user_error")] == 10


async def test_a_store_outage_passes_through_and_never_counts(harness: Harness) -> None:
    outage = StoreUnavailable("profiles", "no PostgreSQL connection within 0.5 s")
    agent = ScriptedAgent("workout", [outage, outage, outage, outage, outage, outage, "plan"])
    guard = harness.guard(agent)
    for _ in range(6):
        with pytest.raises(StoreUnavailable):  # the chat answers 503 naming the store
            await guard.handle(REQUEST)
    # Before: the breaker opened, and the agent fell back for a while once the store was back.
    assert guard.breaker.state.value == "closed"
    assert guard.breaker.snapshot()["failureCount"] == 0
    assert agent.calls == 6  # no retries against an outage either
    assert (await guard.handle(REQUEST)).success
    assert harness.counts()[("ers_agent_calls", "workout", "store_unavailable")] == 6


async def test_last_good_answer_is_the_fallback(harness: Harness) -> None:
    agent = ScriptedAgent("nutrition", ["your plan", AgentFailure("down")])
    guard = harness.guard(agent)
    await guard.handle(REQUEST)
    reply = await guard.handle(REQUEST)
    assert reply.degraded and reply.fallback == "cached"
    assert "your plan 1" in reply.content
    other_user = await guard.handle(AgentRequest("hello", "user-2"))
    assert other_user.fallback == "generic"


async def test_rejected_call_is_degraded_without_running_the_agent(harness: Harness) -> None:
    agent = ScriptedAgent("budget", ["ok"])
    guard = harness.guard(agent)
    guard.breaker.force_open("maintenance", "operator")
    reply = await guard.handle(REQUEST)
    assert reply.degraded and agent.calls == 0
    (span,) = harness.spans.get_finished_spans()
    assert span.attributes["ers.breaker.rejected"] is True
    assert span.status.status_code is StatusCode.UNSET
    assert harness.counts()[("ers_agent_calls", "budget", "rejected")] == 1


async def test_failures_trip_the_breaker_then_it_recovers() -> None:
    now = [0.0]
    harness = Harness()
    agent = ScriptedAgent("workout", [AgentFailure("x")] * 5 + ["healed"])
    breaker = CircuitBreaker(
        "workout", BreakerConfig(open_duration_s=10), clock=lambda: now[0], span_events=False
    )
    guard = GuardedAgent(
        agent,
        breaker,
        FallbackPolicy("workout", "g", None),
        harness.tracer,
        None,
        GuardConfig(max_attempts=1),
    )
    for _ in range(5):
        assert (await guard.handle(REQUEST)).degraded
    assert breaker.state.value == "open"
    assert (await guard.handle(REQUEST)).degraded and agent.calls == 5
    now[0] += 10
    healed = await guard.handle(REQUEST)
    assert not healed.degraded and healed.content == "healed 6"
    assert breaker.state.value == "closed"


async def test_a_users_own_agent_is_protected_with_one_call(harness: Harness) -> None:
    team = Team(
        tracer=harness.tracer,
        instruments=harness.instruments,
        faults=None,
        breaker_config=BreakerConfig(),
        guard_config=GuardConfig(max_attempts=1),
    )
    made: list[ScriptedAgent] = []

    def factory() -> ScriptedAgent:
        made.append(ScriptedAgent("sleep", ["rested"]))
        return made[-1]

    guarded = team.protect(ScriptedAgent("sleep", [AgentFailure("boom")]), factory=factory)
    assert team.get("sleep") is guarded
    assert (await guarded.handle(REQUEST)).degraded
    assert await team.restart(guarded) is True
    assert (await guarded.handle(REQUEST)).content == "rested 1"
    with pytest.raises(ValueError, match="already in the team"):
        team.protect(ScriptedAgent("sleep", ["x"]))


async def test_probe_reports_the_agents_error_without_touching_the_breaker(
    harness: Harness,
) -> None:
    guard = harness.guard(ScriptedAgent("budget", [DependencyError("db gone")]))
    assert await guard.probe() == ProbeOutcome("DependencyError: db gone")
    assert guard.breaker.snapshot()["failureCount"] == 0


async def test_a_breaker_opening_on_a_success_reports_the_trip_as_an_error_span(
    harness: Harness,
) -> None:
    # Three failed calls, then a success that fills the window at a 75% failure rate: the
    # breaker opens on a call that succeeded, and no call span is an error for it.
    agent = ScriptedAgent("budget", [DependencyError("database connection timeout")] * 3 + ["ok"])
    breaker = CircuitBreaker(
        "budget",
        BreakerConfig(failure_threshold=100, minimum_calls=4, sliding_window_size=4),
        span_events=False,
    )
    guard = GuardedAgent(
        agent,
        breaker,
        FallbackPolicy("budget", "g", None),
        harness.tracer,
        None,
        GuardConfig(max_attempts=1),
    )
    for _ in range(3):
        assert (await guard.handle(REQUEST)).degraded
    harness.spans.clear()
    assert not (await guard.handle(REQUEST)).degraded
    assert breaker.state.value == "open"
    spans = {span.name: span for span in harness.spans.get_finished_spans()}
    assert spans["agent.budget"].status.status_code is StatusCode.UNSET
    trip = spans["agent.budget.breaker"]
    assert trip.status.status_code is StatusCode.ERROR
    assert trip.attributes["ers.agent"] == "budget"
    event = trip.events[0]
    assert event.name == "exception"
    assert event.attributes["exception.type"].endswith("BreakerOpened")
    assert "last error: DependencyError: database connection timeout" in str(
        event.attributes["exception.message"]
    )

    # While it stays open, rejected calls report nothing more.
    harness.spans.clear()
    assert (await guard.handle(REQUEST)).degraded
    assert [span.name for span in harness.spans.get_finished_spans()] == ["agent.budget"]


async def test_a_trip_on_slow_calls_alone_names_no_last_error(harness: Harness) -> None:
    # Every call answers, too slowly: the trip's message said "last error: None".
    agent = ScriptedAgent("budget", [0.02])
    config = BreakerConfig(
        failure_threshold=100,
        minimum_calls=2,
        sliding_window_size=2,
        slow_call_duration_s=0.001,
        slow_call_rate_threshold=0.5,
    )
    breaker = CircuitBreaker("budget", config, span_events=False)
    guard = GuardedAgent(
        agent, breaker, FallbackPolicy("budget", "g", None), harness.tracer, None, None
    )
    for _ in range(2):
        assert not (await guard.handle(REQUEST)).degraded
    assert breaker.state.value == "open"
    trip = {span.name: span for span in harness.spans.get_finished_spans()}["agent.budget.breaker"]
    message = str(trip.events[0].attributes["exception.message"])
    assert message.startswith("breaker 'budget' opened: "), message
    assert "last error" not in message and "None" not in message, message


class FailingAgent:
    name = "budget"

    async def handle(self, request: AgentRequest) -> AgentReply:
        raise DependencyError("db down")


async def test_a_failed_call_leaves_no_reference_cycle_for_the_collector(
    harness: Harness,
) -> None:
    """A failed call's frames, span and request go with their last reference. Held in a
    cycle, they would wait for the cyclic collector, whose pauses under an error storm
    stall the event loop for milliseconds."""
    guard = harness.guard(FailingAgent(), max_attempts=2)  # type: ignore[arg-type]
    await guard.handle(REQUEST)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        # Both ways a failure leaves the retry loop: attempts used up, then the breaker
        # opening on this call's own failures.
        for _ in range(3):
            assert (await guard.handle(REQUEST)).degraded
        assert guard.breaker.state.value == "open"
        gc.collect()
        frames = [
            f"{o.f_code.co_name} ({o.f_code.co_filename.rsplit('/', 1)[-1]})"
            for o in gc.garbage
            if isinstance(o, types.FrameType)
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert frames == []


class Unprintable(Exception):
    """An operator's own agent may raise anything, an exception that cannot be printed too."""

    def __str__(self) -> str:
        raise RuntimeError("no text")


async def test_an_exception_that_cannot_be_printed_still_degrades_the_reply(
    harness: Harness,
) -> None:
    agent = ScriptedAgent("coach", [Unprintable(), "ok"])
    reply = await harness.guard(agent, max_attempts=1).handle(REQUEST)
    assert reply.degraded and reply.success is False
    assert reply.content == "general guidance"
    (span,) = harness.spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "Unprintable: <exception str() failed>"
    assert span.attributes["error.type"] == "Unprintable"
    assert harness.counts()[("ers_agent_calls", "coach", "failure")] == 1


async def test_a_timeout_cut_by_the_budget_says_so_not_the_agents_own_limit(
    harness: Harness,
) -> None:
    """An attempt that ran out of what was left of the retries' budget names the budget:
    before, a last retry read "took longer than 0.09 s" beside a `timeout_s` of 0.2."""
    agent = ScriptedAgent("workout", [0.5])
    guard = harness.guard(agent, timeout_s=0.2, max_attempts=5, total_budget_s=0.3)
    assert (await guard.handle(REQUEST)).degraded
    (span,) = harness.spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    first, *_ = [e for e in span.events if e.name == "exception"]
    assert first.attributes["exception.message"] == "the call took longer than 0.2 s"
    assert re.fullmatch(
        r"TimeoutError: the call took longer than the 0\.\d+ s left of its 0\.3 s budget "
        r"for retries \(total_budget_s\)",
        span.status.description or "",
    ), span.status.description

    # A budget shorter than timeout_s cuts the first attempt too.
    harness.spans.clear()
    lone = harness.guard(ScriptedAgent("budget", [0.5]), timeout_s=5, total_budget_s=0.1)
    assert (await lone.handle(REQUEST)).degraded
    (span,) = harness.spans.get_finished_spans()
    assert span.status.description == (
        "TimeoutError: the call took longer than the 0.1 s left of its 0.1 s budget for retries "
        "(total_budget_s)"
    )


class RaisesBase:
    """An operator's agent that raises a BaseException of its own, at once or after an await."""

    def __init__(self, name: str, raised: BaseException, *, after_await: bool) -> None:
        self.name, self.raised, self.after_await = name, raised, after_await

    async def handle(self, request: AgentRequest) -> AgentReply:
        if self.after_await:
            await asyncio.sleep(0)
        raise self.raised


@pytest.mark.parametrize("after_await", [False, True], ids=["at-once", "after-await"])
@pytest.mark.parametrize(
    "raised",
    [KeyboardInterrupt(), SystemExit("bye"), asyncio.CancelledError(), GeneratorExit()],
    ids=lambda e: type(e).__name__,
)
async def test_an_agents_own_base_exception_is_its_failure_and_falls_back(
    harness: Harness, raised: BaseException, after_await: bool
) -> None:
    """Let through, it failed the chat with a 500 (and a CancelledError ended the chat's
    task) with no fallback, no breaker failure, no error span and so no incident."""
    guard = harness.guard(RaisesBase("coach", raised, after_await=after_await), max_attempts=1)
    reply = await guard.handle(REQUEST)
    assert reply.degraded and reply.success is False
    assert reply.content == "general guidance"
    assert asyncio.current_task().cancelling() == 0
    (span,) = harness.spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "RaisedBaseException"
    assert f"the agent raised {type(raised).__name__}" in (span.status.description or "")
    assert harness.counts()[("ers_agent_calls", "coach", "failure")] == 1
    assert guard.breaker.snapshot()["failureCount"] == 1


async def test_a_cancellation_of_the_chat_still_cancels_the_agents_call(harness: Harness) -> None:
    guard = harness.guard(ScriptedAgent("coach", [5.0]), timeout_s=10)
    call = asyncio.ensure_future(guard.handle(REQUEST))
    await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


class HoldsTheLoop:
    """An operator's agent that calls a synchronous client inside ``async def handle``."""

    def __init__(self, name: str, seconds: float) -> None:
        self.name = name
        self.seconds = seconds
        self.calls = 0

    async def handle(self, request: AgentRequest) -> AgentReply:
        self.calls += 1
        time.sleep(self.seconds)  # what the agent does: every other request waits
        return AgentReply("answered late", self.name)


async def test_an_agent_that_holds_the_loop_past_its_timeout_fails_and_is_not_retried(
    harness: Harness,
) -> None:
    """It counted as a success: no timer can cut a step that never pauses, so the breaker
    never opened and the agent held the whole service up on every call, unnoticed."""
    agent = HoldsTheLoop("coach", 0.3)
    guard = harness.guard(agent, timeout_s=0.1, max_attempts=3)
    reply = await guard.handle(REQUEST)
    assert reply.degraded and reply.content == "general guidance"
    assert agent.calls == 1  # another try would hold everyone up again
    (span,) = harness.spans.get_finished_spans()
    assert span.attributes["error.type"] == "HeldTheLoop"
    assert "held the event loop for 0.3 s" in (span.status.description or "")
    assert guard.breaker.snapshot()["failureCount"] == 1
