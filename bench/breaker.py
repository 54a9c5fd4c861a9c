"""Cost of a guarded call: our breaker against the breakers a user would pick instead,
side by side in one run.

Each variant calls the same trivial function; rounds interleave the variants so they see the
same machine noise, and the median round is reported. The ratios compare total time per call
(the function included), the cost a caller actually pays.

- Synchronous: our permit (``acquire`` + ``record_success``) against pybreaker's
  ``CircuitBreaker.call``.
- Asynchronous, the path ERS's guard takes on every successful agent call: ``acquire()``,
  await the coroutine, ``record_success(perf_counter() - started)`` (the duration is what
  slow-call detection needs), against purgatory (``AsyncCircuitBreakerFactory``, the breaker
  fetched once and held across calls, ``async with breaker``) and aiobreaker
  (``call_async``), all three with their defaults of 5 failures to open.
- The whole guarded agent call (span, breaker, timeout, metrics) against a bare SDK span
  around the same agent plus the same two metric records: the span, not the breaker, should
  be the cost.

Each figure is printed as ``name=value`` with the anchor's raw numbers on the line above:
``breaker_vs_pybreaker`` (target <= 0.5), ``guard_vs_bare_span`` (target <= 1.15), and last
``breaker_vs_purgatory=<ours/purgatory ns per successful async call>`` (target <= 0.8).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Callable

import aiobreaker
import pybreaker
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from purgatory import AsyncCircuitBreakerFactory

from service.agents.base import AgentReply, AgentRequest
from service.resilience.breaker import BreakerConfig, CircuitBreaker
from service.resilience.fallback import FallbackPolicy, LastGoodAnswers
from service.resilience.guard import GuardedAgent, hash_user_id
from service.resilience.guard_config import GuardConfig
from service.resilience.instruments import AgentInstruments


def trivial(value: int) -> int:
    return value + 1


def bare_loop(iterations: int) -> int:
    started = time.perf_counter_ns()
    for i in range(iterations):
        trivial(i)
    return time.perf_counter_ns() - started


def ours_loop(iterations: int) -> int:
    breaker = CircuitBreaker("bench", BreakerConfig(), span_events=False)
    acquire = breaker.acquire
    started = time.perf_counter_ns()
    for i in range(iterations):
        permit = acquire()
        trivial(i)
        permit.record_success()
    elapsed = time.perf_counter_ns() - started
    assert breaker.snapshot()["bufferedCalls"] == min(iterations, 20)
    return elapsed


def pybreaker_loop(iterations: int) -> int:
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    call = breaker.call
    started = time.perf_counter_ns()
    for i in range(iterations):
        call(trivial, i)
    return time.perf_counter_ns() - started


VARIANTS: dict[str, Callable[[int], int]] = {
    "bare": bare_loop,
    "ours": ours_loop,
    "pybreaker": pybreaker_loop,
}


def measure_breaker(rounds: int = 7, iterations: int = 200_000) -> dict[str, float]:
    """Median ns per call of each variant, the overheads over a bare call, and the ratio."""
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for loop in VARIANTS.values():
        loop(iterations // 10)  # warm-up
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for name, loop in VARIANTS.items():
                samples[name].append(loop(iterations) / iterations)
    finally:
        if gc_was_enabled:
            gc.enable()
    ns = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "bare_ns": ns["bare"],
        "ours_ns": ns["ours"],
        "pybreaker_ns": ns["pybreaker"],
        "ours_overhead_ns": ns["ours"] - ns["bare"],
        "pybreaker_overhead_ns": ns["pybreaker"] - ns["bare"],
        "breaker_vs_pybreaker": ns["ours"] / ns["pybreaker"],
    }


def print_breaker_table(result: dict[str, float]) -> None:
    print("variant                                     ns/call   overhead ns")
    print(f"(a) bare call                              {result['bare_ns']:8.1f}")
    print(
        f"(b) ours: acquire() + record_success()     {result['ours_ns']:8.1f}"
        f"   {result['ours_overhead_ns']:8.1f}"
    )
    print(
        f"(c) pybreaker: CircuitBreaker.call         {result['pybreaker_ns']:8.1f}"
        f"   {result['pybreaker_overhead_ns']:8.1f}"
    )
    print("ratio = (b) / (c), total ns per call including the function itself")


async def trivial_async(value: int) -> int:
    return value + 1


async def bare_async_loop(iterations: int) -> int:
    started = time.perf_counter_ns()
    for i in range(iterations):
        await trivial_async(i)
    return time.perf_counter_ns() - started


async def ours_async_loop(iterations: int) -> int:
    """What GuardedAgent.handle does around the agent on a successful call."""
    breaker = CircuitBreaker("bench", BreakerConfig(), span_events=False)
    acquire, clock = breaker.acquire, time.perf_counter
    started = time.perf_counter_ns()
    for i in range(iterations):
        permit = acquire()
        call_started = clock()
        await trivial_async(i)
        permit.record_success(clock() - call_started)
    elapsed = time.perf_counter_ns() - started
    assert breaker.snapshot()["bufferedCalls"] == min(iterations, 20)
    return elapsed


async def purgatory_loop(iterations: int) -> int:
    factory = AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)
    await factory.initialize()
    breaker = await factory.get_breaker("bench")  # held across calls
    started = time.perf_counter_ns()
    for i in range(iterations):
        async with breaker:
            await trivial_async(i)
    elapsed = time.perf_counter_ns() - started
    assert breaker.context.state == "closed"
    return elapsed


async def aiobreaker_loop(iterations: int) -> int:
    breaker = aiobreaker.CircuitBreaker(fail_max=5)
    call = breaker.call_async
    started = time.perf_counter_ns()
    for i in range(iterations):
        await call(trivial_async, i)
    elapsed = time.perf_counter_ns() - started
    assert breaker.current_state is aiobreaker.CircuitBreakerState.CLOSED
    return elapsed


ASYNC_VARIANTS = {
    "bare": bare_async_loop,
    "ours": ours_async_loop,
    "purgatory": purgatory_loop,
    "aiobreaker": aiobreaker_loop,
}


def measure_async_breakers(rounds: int = 7, iterations: int = 100_000) -> dict[str, float]:
    """Median ns per successful async call of each variant, interleaved by round."""

    async def run() -> dict[str, list[float]]:
        samples: dict[str, list[float]] = {name: [] for name in ASYNC_VARIANTS}
        for loop in ASYNC_VARIANTS.values():
            await loop(iterations // 10)  # warm-up
        for _ in range(rounds):
            for name, loop in ASYNC_VARIANTS.items():
                samples[name].append(await loop(iterations) / iterations)
        return samples

    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        samples = asyncio.run(run())
    finally:
        if gc_was_enabled:
            gc.enable()
    ns = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "async_bare_ns": ns["bare"],
        "async_ours_ns": ns["ours"],
        "purgatory_ns": ns["purgatory"],
        "aiobreaker_ns": ns["aiobreaker"],
        "breaker_vs_purgatory": ns["ours"] / ns["purgatory"],
        "breaker_vs_aiobreaker": ns["ours"] / ns["aiobreaker"],
    }


class EchoAgent:
    name = "echo"

    def __init__(self) -> None:
        self._reply = AgentReply("ok", "echo")

    async def handle(self, request: AgentRequest) -> AgentReply:
        return self._reply


def _telemetry() -> tuple[object, AgentInstruments]:
    tracer = TracerProvider().get_tracer("bench")
    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("bench")
    return tracer, AgentInstruments.create(meter, CollectorRegistry())


async def _guarded_loop(iterations: int) -> int:
    tracer, instruments = _telemetry()
    guard = GuardedAgent(
        EchoAgent(),
        CircuitBreaker("echo", BreakerConfig()),
        FallbackPolicy("echo", "guidance", LastGoodAnswers()),
        tracer,  # type: ignore[arg-type]
        instruments,
        GuardConfig(),
    )
    request = AgentRequest("hello", "user-1")
    started = time.perf_counter_ns()
    for _ in range(iterations):
        await guard.handle(request)
    return time.perf_counter_ns() - started


async def _bare_span_loop(iterations: int) -> int:
    tracer = TracerProvider().get_tracer("bench")
    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("bench")
    agent = EchoAgent()
    request = AgentRequest("hello", "user-1")
    # The bare SDK's instruments: a counter and a histogram, as an instrumented agent would.
    calls = meter.create_counter("ers_agent_calls")
    duration = meter.create_histogram("ers_agent_call_duration_seconds")
    started = time.perf_counter_ns()
    for _ in range(iterations):
        call_started = time.perf_counter()
        with tracer.start_as_current_span(  # type: ignore[attr-defined]
            "agent.echo",
            attributes={
                "ers.agent": "echo",
                "ers.user_id": hash_user_id(request.user_id),
                "ers.synthetic": False,
                "ers.degraded": False,
            },
        ):
            await agent.handle(request)
            # Inside the span, as the guard records them, so both attach trace exemplars.
            calls.add(1, {"agent": "echo", "outcome": "success"})
            duration.record(time.perf_counter() - call_started, {"agent": "echo"})
    return time.perf_counter_ns() - started


def measure_guard(rounds: int = 7, iterations: int = 20_000) -> dict[str, float]:
    """Median ns per guarded call and per bare span + metrics, interleaved by round."""
    loops = {"guarded": _guarded_loop, "bare_span": _bare_span_loop}
    samples: dict[str, list[float]] = {name: [] for name in loops}
    for loop in loops.values():
        asyncio.run(loop(iterations // 10))
    for _ in range(rounds):
        for name, loop in loops.items():
            samples[name].append(asyncio.run(loop(iterations)) / iterations)
    ns = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "guarded_ns": ns["guarded"],
        "bare_span_ns": ns["bare_span"],
        "guard_vs_bare_span": ns["guarded"] / ns["bare_span"],
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=200_000)
    args = parser.parse_args(argv)
    result = measure_breaker(args.rounds, args.iterations)
    print_breaker_table(result)
    guard = measure_guard(args.rounds)
    print(f"(d) guarded agent call                   {guard['guarded_ns']:10.1f}")
    print(f"(e) bare SDK span + the same two metrics {guard['bare_span_ns']:10.1f}")
    held = measure_async_breakers(args.rounds, args.iterations // 2)
    print("successful async call (the guard's path)     ns/call   overhead ns")
    for label, key in (
        ("(f) bare await", "async_bare_ns"),
        ("(g) ours: acquire + await + record_success", "async_ours_ns"),
        ("(h) purgatory, held breaker: async with", "purgatory_ns"),
        ("(i) aiobreaker: call_async", "aiobreaker_ns"),
    ):
        overhead = held[key] - held["async_bare_ns"]
        print(f"{label:<44}{held[key]:8.1f}   {overhead:8.1f}")
    print(
        f"anchor pybreaker {result['pybreaker_ns']:.1f} ns/call; "
        f"ours {result['ours_ns']:.1f}, bare {result['bare_ns']:.1f}"
    )
    print(f"breaker_vs_pybreaker={result['breaker_vs_pybreaker']:.3f}")
    print(
        f"anchor bare SDK span + two metrics {guard['bare_span_ns']:.1f} ns/call; "
        f"guarded {guard['guarded_ns']:.1f}"
    )
    print(f"guard_vs_bare_span={guard['guard_vs_bare_span']:.3f}")
    print(
        f"anchor purgatory {held['purgatory_ns']:.1f} ns/call, aiobreaker "
        f"{held['aiobreaker_ns']:.1f} (ours/aiobreaker {held['breaker_vs_aiobreaker']:.3f}); "
        f"ours {held['async_ours_ns']:.1f}, bare await {held['async_bare_ns']:.1f}"
    )
    print(f"breaker_vs_purgatory={held['breaker_vs_purgatory']:.3f}")
    return {**result, **guard, **held}


if __name__ == "__main__":
    main()
