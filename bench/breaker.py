"""Cost of a guarded call: our breaker against pybreaker, side by side in one run.

Each variant calls the same trivial function; rounds interleave the variants so they see the
same machine noise, and the median round is reported. The ratio compares total time per call
(the function included), the cost a caller actually pays.
It also measures the whole guarded agent call (span, breaker, timeout, metrics) against a
bare SDK span around the same agent plus the same two metric records: the span, not the
breaker, should be the cost.
Last lines: ``breaker_vs_pybreaker=<ours/pybreaker ns per call>`` (target <= 0.5) and
``guard_vs_bare_span=<guarded/bare span+metrics>`` (target <= 1.15).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Callable

import pybreaker
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from service.agents.base import AgentReply, AgentRequest
from service.resilience.breaker import BreakerConfig, CircuitBreaker
from service.resilience.fallback import FallbackPolicy, LastGoodAnswers
from service.resilience.guard import GuardConfig, GuardedAgent, hash_user_id
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


class EchoAgent:
    name = "echo"

    def __init__(self) -> None:
        self._reply = AgentReply("ok", "echo")

    async def handle(self, request: AgentRequest) -> AgentReply:
        return self._reply


def _telemetry() -> tuple[object, AgentInstruments]:
    tracer = TracerProvider().get_tracer("bench")
    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("bench")
    return tracer, AgentInstruments.create(meter)


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
    tracer, instruments = _telemetry()
    agent = EchoAgent()
    request = AgentRequest("hello", "user-1")
    calls, duration = instruments.calls, instruments.duration
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
    print(f"breaker_vs_pybreaker={result['breaker_vs_pybreaker']:.3f}")
    print(f"guard_vs_bare_span={guard['guard_vs_bare_span']:.3f}")
    return {**result, **guard}


if __name__ == "__main__":
    main()
