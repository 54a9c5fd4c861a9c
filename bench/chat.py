"""/chat throughput and server CPU of the real uvicorn server with telemetry on and off,
beside the anchor, in the same run.

The anchor is what any FastAPI service pays for the same HTTP telemetry: a minimal app with
one pydantic POST (``bench.anchor_app``), bare and instrumented with the OpenTelemetry
FastAPI instrumentation for the server spans and request-duration series ERS records with
its own middleware. Each round runs the four setups (ERS on, ERS off, anchor instrumented,
anchor bare), starting with a different one each round so that all see the same machine
noise; each setup is a fresh server process, warmed up, then loaded with the same message
mix over the same keep-alive connections. Server CPU per request is the process's user +
system CPU time (every thread) over the measured load, divided by the requests answered.
Medians are compared.

Figures, each printed as ``name=value`` with the anchor's raw numbers on the line above:
``anchor_telemetry_ratio`` (minimal app, instrumented/bare req/s), ``ers_telemetry_us_per_
request`` (ERS's extra server CPU per request with telemetry on), ``ers_own_telemetry_us_per_
request`` (that minus what instrument_app costs the minimal app; target <= 80) and last
``chat_telemetry_ratio=<ERS on/off req/s>`` (target >= 0.70).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import psutil

from bench.loadgen import build_post, median, run_load
from bench.server import Served, anchor_process, ers_process

MESSAGES = ["plan my meals", "make me a workout plan", "budget report", "hello"]

SETUPS: dict[str, Callable[[], AbstractContextManager[Served]]] = {
    "ers_on": lambda: ers_process({"ERS_TELEMETRY_ENABLED": "true"}),
    "ers_off": lambda: ers_process({"ERS_TELEMETRY_ENABLED": "false"}),
    "anchor_on": lambda: anchor_process(instrumented=True),
    "anchor_off": lambda: anchor_process(instrumented=False),
}
LABELS = {
    "ers_on": "ERS, telemetry on",
    "ers_off": "ERS, telemetry off",
    "anchor_on": "anchor, instrumented",
    "anchor_off": "anchor, bare",
}


def request_factory(host: str):  # noqa: ANN201
    prepared = [
        build_post(host, "/chat", {"message": m, "userId": f"bench-{i % 50}"})
        for i, m in enumerate(MESSAGES * 50)
    ]
    return lambda n: prepared[n % len(prepared)]


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def measure_one(served: Served, requests: int, connections: int) -> dict[str, float]:
    host = served.url.removeprefix("http://")
    asyncio.run(run_load(served.url, request_factory(host), total_requests=300))  # warm-up
    before = cpu_seconds(served.pid)
    result = asyncio.run(
        run_load(
            served.url,
            request_factory(host),
            connections=connections,
            total_requests=requests,
            time_limit_s=60,
        )
    )
    cpu = cpu_seconds(served.pid) - before
    figures = result.summary()
    figures["cpu_us"] = cpu * 1e6 / max(result.requests, 1)
    return figures


def rotations(names: list[str], rounds: int) -> Iterator[list[str]]:
    for number in range(rounds):
        shift = number % len(names)
        yield names[shift:] + names[:shift]


def measure(rounds: int = 5, requests: int = 3000, connections: int = 16) -> dict[str, object]:
    results: dict[str, list[dict[str, float]]] = {name: [] for name in SETUPS}
    for order in rotations(list(SETUPS), rounds):
        for name in order:
            with SETUPS[name]() as served:
                results[name].append(measure_one(served, requests, connections))
    summary = {
        name: {
            key: median([r[key] for r in runs])
            for key in ("rps", "p50_ms", "p99_ms", "non_2xx", "cpu_us")
        }
        for name, runs in results.items()
    }
    ers_us = summary["ers_on"]["cpu_us"] - summary["ers_off"]["cpu_us"]
    anchor_us = summary["anchor_on"]["cpu_us"] - summary["anchor_off"]["cpu_us"]
    return {
        "summary": summary,
        "rounds": rounds,
        "requests": requests,
        "chat_telemetry_ratio": summary["ers_on"]["rps"] / summary["ers_off"]["rps"],
        "anchor_telemetry_ratio": summary["anchor_on"]["rps"] / summary["anchor_off"]["rps"],
        "ers_telemetry_us_per_request": ers_us,
        "anchor_telemetry_us_per_request": anchor_us,
        "ers_own_telemetry_us_per_request": ers_us - anchor_us,
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args(argv)
    result = measure(args.rounds, args.requests)
    summary: dict[str, dict[str, float]] = result["summary"]  # type: ignore[assignment]
    print(
        f"medians of {args.rounds} rounds, {args.requests} /chat requests each, "
        "16 keep-alive connections"
    )
    print(
        f"{'setup':<24}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}{'CPU us/req':>12}"
    )
    for name, figures in summary.items():
        print(
            f"{LABELS[name]:<24}{figures['rps']:>10.1f}{figures['p50_ms']:>10.2f}"
            f"{figures['p99_ms']:>10.2f}{figures['non_2xx']:>10.0f}{figures['cpu_us']:>12.1f}"
        )
    on, off = summary["anchor_on"], summary["anchor_off"]
    print(f"anchor minimal app req/s: instrumented {on['rps']:.1f}, bare {off['rps']:.1f}")
    print(f"anchor_telemetry_ratio={result['anchor_telemetry_ratio']:.3f}")
    print(
        f"anchor minimal app CPU us/request: instrumented {on['cpu_us']:.1f}, bare "
        f"{off['cpu_us']:.1f} (+{result['anchor_telemetry_us_per_request']:.1f}); ERS on "
        f"{summary['ers_on']['cpu_us']:.1f}, off {summary['ers_off']['cpu_us']:.1f}"
    )
    print(f"ers_telemetry_us_per_request={result['ers_telemetry_us_per_request']:.1f}")
    print(
        f"anchor instrument_app +{result['anchor_telemetry_us_per_request']:.1f} us/request; "
        f"ERS telemetry +{result['ers_telemetry_us_per_request']:.1f}"
    )
    print(f"ers_own_telemetry_us_per_request={result['ers_own_telemetry_us_per_request']:.1f}")
    print(
        f"anchor_telemetry_ratio {result['anchor_telemetry_ratio']:.3f} (minimal app "
        f"{on['rps']:.1f}/{off['rps']:.1f} req/s); ERS req/s on "
        f"{summary['ers_on']['rps']:.1f}, off {summary['ers_off']['rps']:.1f}"
    )
    print(f"chat_telemetry_ratio={result['chat_telemetry_ratio']:.3f}")
    return result


if __name__ == "__main__":
    main()
