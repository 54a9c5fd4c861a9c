"""Cost of guarding a remote agent: a guarded ``RemoteAgent`` call against a bare ``httpx``
call to the same agent, side by side in one run.

The example agent (examples/remote_agent) runs under uvicorn as a process of its own on a
free 127.0.0.1 port, healthy. In this process, rounds alternate between the variants; each
round makes the same number of calls with the same number in flight, and its throughput is
calls per second of wall time. Medians over the rounds are reported.

- bare: one ``httpx.AsyncClient`` with the limits, timeout and transport the remote agent
  uses, POSTing the ERS contract's JSON and parsing the reply's ``response``;
- bare, instrumented: the same client with the official OpenTelemetry httpx instrumentation
  on the service's tracer provider (``HTTPXClientInstrumentor.instrument_client``): a client
  span per call and a ``traceparent`` header, and nothing of ERS. What tracing a client the
  generic way costs, for reference (the remote agent does not use the instrumentation);
- guarded: a ``RemoteAgent`` behind a ``GuardedAgent`` built by ``Team.protect``, on the
  service's telemetry (``build_telemetry``: its tracer provider with the incident and
  kept-trace span processors, its Prometheus-read meter provider, ``AgentInstruments``); the
  agent makes its own client span per attempt on that tracer provider and sends the
  ``traceparent`` (``service.agents.attempt_span``). It sends through the same kind of
  pooled transport, without the client's layer (cookies, redirects, hooks: nothing an agent
  call uses); what that saves against the bare client shows as "guarded without telemetry"
  in the in-process line below.

``remote_guard_ratio`` is bare throughput / guarded throughput (medians), i.e. the time a
guarded call costs relative to a bare one: 1.10 means 10 % more time per call, and the
target is <= 1.10. It is printed last, with both raw figures and the rounds on the line above.
Before it, for reference, ``instrumentation_alone_ratio`` (bare / bare instrumented: what the
official instrumentation costs a bare client) and ``guard_vs_instrumented_ratio`` (bare
instrumented / guarded: ERS against a client traced the generic way; below 1 when a guarded
call costs less than an instrumented bare one).

Where a guarded call's time goes is measured apart, in this process, with every reply from
a transport that answers at once (the network taken out, one call at a time):
``guard_telemetry_us_per_call`` is a guarded call's CPU with the service's telemetry minus
without any (no-op tracer, no metrics), printed after the bare client and the guarded call
without telemetry on the line above it.

The benchmark is bound by this process's CPU (the agent's replies cost it less than the
client's calls cost this process), so the ratios are ratios of client CPU per call, which
are printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.trace import NoOpTracerProvider, TracerProvider

from service.agents.base import AgentRequest
from service.agents.remote import RemoteAgent
from service.agents.specs import HttpAgentSpec
from service.chat.team import Team
from service.cli.main import tune_garbage_collector
from service.incidents.service import IncidentService
from service.incidents.store import IncidentStore
from service.resilience.breaker import BreakerConfig
from service.resilience.guard import GuardedAgent
from service.resilience.guard_config import GuardConfig
from service.resilience.instruments import AgentInstruments
from telemetry.providers import Telemetry, build_telemetry
from telemetry.trace_keeper import TraceKeeper
from tests.example_agent import ExampleAgent, start_example_agent

TIMEOUT_S = 5.0  # the service's default agent_timeout_s
MESSAGE = "what should I eat before a run?"
USER_ID = "user-1"


class Bare:
    """What a caller without ERS would write: the same client settings, the same contract."""

    def __init__(
        self, url: str, max_connections: int, tracer_provider: TracerProvider | None = None
    ) -> None:
        self.url = url
        self.client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(
                retries=0,
                limits=httpx.Limits(
                    max_connections=max_connections,
                    max_keepalive_connections=max_connections,
                ),
            ),
            timeout=httpx.Timeout(TIMEOUT_S),
            follow_redirects=False,
            trust_env=False,
        )
        if tracer_provider is not None:
            HTTPXClientInstrumentor.instrument_client(self.client, tracer_provider=tracer_provider)

    async def call(self) -> None:
        body = {"message": MESSAGE, "userId": USER_ID, "intent": None, "traceId": None}
        response = await self.client.post(self.url, json=body)
        response.raise_for_status()
        document = response.json()
        if not isinstance(document.get("response"), str):
            raise RuntimeError(f"the example agent broke the contract: {document!r}")

    async def aclose(self) -> None:
        await self.client.aclose()


class Guarded:
    """A remote agent as the service runs it: behind its guard, on the service's telemetry."""

    def __init__(
        self, url: str, telemetry: Telemetry, tracer_provider: TracerProvider | None = None
    ) -> None:
        """With ``tracer_provider`` (a no-op one): that one's spans, and no metrics."""
        spec = HttpAgentSpec(url=url)  # type: ignore[arg-type]
        provider = tracer_provider or telemetry.tracer_provider
        self.agent = RemoteAgent(
            "remote", spec, default_timeout_s=TIMEOUT_S, tracer_provider=provider
        )
        team = Team(
            tracer=provider.get_tracer("ers") if tracer_provider else telemetry.tracer,
            instruments=None
            if tracer_provider
            else AgentInstruments.create(telemetry.meter, telemetry.registry),
            faults=None,
            breaker_config=BreakerConfig(),
            guard_config=GuardConfig(timeout_s=TIMEOUT_S, total_budget_s=TIMEOUT_S * 1.6),
        )
        self.guard: GuardedAgent = team.protect(self.agent)
        self.request = AgentRequest(message=MESSAGE, user_id=USER_ID)

    async def call(self) -> None:
        reply = await self.guard.handle(self.request)
        if reply.degraded or not reply.success:
            raise RuntimeError(f"the guarded call fell back: {reply.content!r}")

    async def aclose(self) -> None:
        await self.agent.aclose()


@contextlib.contextmanager
def service_telemetry(folder: Path) -> Iterator[Telemetry]:
    """The service's providers with the span processors its lifespan adds (the incident
    processor on a SQLite incident store, the trace keeper without its file archive)."""
    telemetry = build_telemetry("ers-bench", "0", enabled=True)
    store = IncidentStore(folder / "incidents.sqlite3")
    incidents = IncidentService(store, telemetry.meter, rules_path=None)
    telemetry.add_span_processor(incidents.processor)
    telemetry.add_span_processor(TraceKeeper())
    try:
        yield telemetry
    finally:
        telemetry.shutdown()
        store.close()


async def one_round(
    call: Callable[[], Awaitable[None]], calls: int, concurrency: int
) -> tuple[float, float]:
    """Calls per second of ``calls`` calls, ``concurrency`` in flight, and this process's
    CPU microseconds per call (every thread: span processors included)."""
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    cpu_started = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return calls / elapsed, (time.process_time() - cpu_started) / calls * 1e6


async def measure(
    agent: ExampleAgent, telemetry: Telemetry, rounds: int, calls: int, concurrency: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per variant, calls per second and CPU microseconds per call of each round."""
    url = f"{agent.url}/chat"
    max_connections = HttpAgentSpec(url=url).max_connections  # type: ignore[arg-type]
    variants: dict[str, Any] = {
        "bare": Bare(url, max_connections),
        "bare_instrumented": Bare(url, max_connections, telemetry.tracer_provider),
        "guarded": Guarded(url, telemetry),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for variant in variants.values():  # warm-up: connections open, code paths hot
            await one_round(variant.call, max(calls // 5, concurrency), concurrency)
        for index in range(rounds):
            # Each round starts another variant first, so none always follows the same one.
            names = list(variants)
            names = names[index % len(names) :] + names[: index % len(names)]
            for name in names:
                await asyncio.to_thread(agent.forget)  # the agent keeps a list of its calls
                rate, cpu_us = await one_round(variants[name].call, calls, concurrency)
                samples[name].append(rate)
                cpu[name].append(cpu_us)
    finally:
        for variant in variants.values():
            await variant.aclose()
    return samples, cpu


BODY = b'{"response": "The example agent read: what should I eat before a run?", "confidence": 0.9}'


async def _answer_at_once(self: Any, request: httpx.Request) -> httpx.Response:
    await request.aread()
    headers = {"content-type": "application/json", "content-length": str(len(BODY))}
    return httpx.Response(200, headers=headers, stream=httpx.ByteStream(BODY), request=request)


async def in_process(telemetry: Telemetry, rounds: int, calls: int) -> dict[str, float]:
    """CPU microseconds per call, medians, of each variant one call at a time, every reply
    from a transport that answers at once: what the client side costs, without the network."""
    noop = NoOpTracerProvider()
    bare = Bare("http://127.0.0.1:9/chat", 1)
    guarded = Guarded("http://127.0.0.1:9/chat", telemetry)
    untraced = Guarded("http://127.0.0.1:9/chat", telemetry, tracer_provider=noop)
    variants = {"bare": bare, "guarded": guarded, "untraced": untraced}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    real = httpx.AsyncHTTPTransport.handle_async_request
    httpx.AsyncHTTPTransport.handle_async_request = _answer_at_once  # type: ignore[method-assign]
    try:
        for variant in variants.values():
            await one_round(variant.call, max(calls // 5, 1), 1)
        for _ in range(rounds):
            for name, variant in variants.items():
                cpu[name].append((await one_round(variant.call, calls, 1))[1])
    finally:
        httpx.AsyncHTTPTransport.handle_async_request = real  # type: ignore[method-assign]
        for variant in variants.values():
            await variant.aclose()
    return {name: statistics.median(values) for name, values in cpu.items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    parser.add_argument("--concurrency", type=int, default=8, help="calls in flight")
    args = parser.parse_args(argv)
    tune_garbage_collector()  # as `ers serve` does; both variants run in this process
    with tempfile.TemporaryDirectory() as folder:
        agent = start_example_agent(Path(folder) / "agent")
        try:
            with service_telemetry(Path(folder)) as telemetry:
                samples, cpu = asyncio.run(
                    measure(agent, telemetry, args.rounds, args.calls, args.concurrency)
                )
        finally:
            agent.stop()
        apart_folder = Path(folder) / "apart"
        apart_folder.mkdir()
        with service_telemetry(apart_folder) as telemetry:  # a registry of its own
            apart = asyncio.run(in_process(telemetry, args.rounds, args.calls))
    median = {name: statistics.median(values) for name, values in samples.items()}
    for name, values in samples.items():
        shown = " ".join(f"{v:.0f}" for v in values)
        print(
            f"{name:<24} req/s median {median[name]:7.1f}, rounds {shown}; "
            f"client CPU {statistics.median(cpu[name]):6.1f} us/call"
        )
    cpu_median = {name: statistics.median(values) for name, values in cpu.items()}
    alone = median["bare"] / median["bare_instrumented"]
    print(
        f"anchor bare httpx {median['bare']:.1f} req/s, {cpu_median['bare']:.1f} us/call; "
        f"with the httpx instrumentation {median['bare_instrumented']:.1f} req/s, "
        f"{cpu_median['bare_instrumented']:.1f} us/call"
    )
    print(f"instrumentation_alone_ratio={alone:.3f}")
    ours = median["bare_instrumented"] / median["guarded"]
    print(
        f"anchor bare httpx instrumented {median['bare_instrumented']:.1f} req/s, "
        f"{cpu_median['bare_instrumented']:.1f} us/call; guarded {median['guarded']:.1f} req/s, "
        f"{cpu_median['guarded']:.1f} us/call"
    )
    print(f"guard_vs_instrumented_ratio={ours:.3f}")
    ratio = median["bare"] / median["guarded"]
    spans = apart["guarded"] - apart["untraced"]
    print(
        f"anchor in process, replies at once: bare httpx {apart['bare']:.1f} us/call; guarded "
        f"without telemetry {apart['untraced']:.1f}, with the service's {apart['guarded']:.1f}"
    )
    print(f"guard_telemetry_us_per_call={spans:.1f}")
    # Time cost of the guard: bare req/s over guarded req/s; <= 1.10 meets the target.
    rounds_of = {name: " ".join(f"{v:.0f}" for v in values) for name, values in samples.items()}
    print(
        f"anchor bare httpx {median['bare']:.1f} req/s (rounds {rounds_of['bare']}); "
        f"guarded {median['guarded']:.1f} (rounds {rounds_of['guarded']}); "
        f"service telemetry with its span processors, {args.concurrency} in flight, "
        f"{args.calls} calls a round"
    )
    print(f"remote_guard_ratio={ratio:.3f}")
    return {
        **median,
        "instrumentation_alone_ratio": alone,
        "guard_vs_instrumented_ratio": ours,
        "guard_telemetry_us_per_call": spans,
        "remote_guard_ratio": ratio,
    }


if __name__ == "__main__":
    main()
