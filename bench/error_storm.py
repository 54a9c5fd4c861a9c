"""Does an error storm slow the healthy agents? /chat p99 of healthy agents while another
agent fails every call, against the same traffic with that agent healthy, side by side.

Every phase sends the same two streams at once: healthy-agent chats (measured) and budget
chats (the storm). In a storm phase every budget call fails inside its guard (its breaker
is disabled, as an operator disables one, so it never opens and every failure is an error
span through the incident pipeline); in a calm phase the same budget chats succeed.

A round is one server through alternating calm and storm phases (the fault injected, then
cleared; which comes first alternates by round), each after a short settling run of its
own. The round's ratio is the median of its storm phases' p99s over the median of its calm
phases'. The figure is the median of five rounds' ratios; the calm p99s (the anchor) are
printed on the line above the last:
``error_storm_p99_ratio=<median of the rounds' storm/calm p99>`` (target <= 1.10).

Why so: on this machine the p99 of one run of a few seconds differs from the next one's by
up to a fifth, more than the storm's effect (measured: calm p99s of 10.1 to 20.6 ms). Long
runs on fresh servers side by side measured which one was luckier; now a slow spell lands
on one phase of one side, and the medians leave it out. The server runs on one CPU and the
load generator on another (``bench.server.server_and_load_cpus``): left to the scheduler,
the two shared a CPU now and then, which made a run's latencies bimodal. The storm's own
threads (the incident writer, the trace archive) then take their CPU from the server's,
as they would in a replica given one core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from contextlib import ExitStack
from typing import Any

import httpx

from bench.loadgen import LoadResult, build_post, run_load
from bench.server import ers_server, on_cpus, server_and_load_cpus

HEALTHY = ("plan my meals", "make me a workout plan", "hello")
SETTLE_REQUESTS = 100  # per stream, after each switch, not measured


async def _run(url: str, requests: int) -> tuple[list[float], int]:
    """The healthy chats' latencies, and how many budget chats were answered degraded."""
    host = url.removeprefix("http://")
    healthy = [build_post(host, "/chat", {"message": m, "userId": "calm"}) for m in HEALTHY]
    budget = build_post(host, "/chat", {"message": "budget report", "userId": "storm"})
    degraded = 0

    def count(n: int, status: int, body: bytes) -> None:
        nonlocal degraded
        degraded += json.loads(body)["emergency"]

    measured, _ = await asyncio.gather(
        run_load(
            url, lambda n: healthy[n % 3], connections=8, total_requests=requests, time_limit_s=120
        ),
        run_load(
            url,
            lambda n: budget,
            connections=8,
            total_requests=requests,
            time_limit_s=120,
            check=count,
        ),
    )
    return measured.latencies_s, degraded


def _storm(url: str, on: bool) -> None:
    fault = f"{url}/api/emergency/simulate-error"
    if on:
        body = {"component": "budget", "errorType": "agent"}
        httpx.post(fault, json=body, timeout=10).raise_for_status()
    else:
        httpx.delete(fault, params={"component": "budget"}, timeout=10).raise_for_status()


def _p99_ms(latencies: list[float]) -> float:
    return LoadResult(len(latencies), 0.0, latencies).percentile_ms(0.99)


def measure_round(env: dict[str, str], number: int, requests: int, phases: int) -> dict[str, Any]:
    p99: dict[str, list[float]] = {"calm": [], "storm": []}
    failed = 0
    server_cpus, load_cpus = server_and_load_cpus()
    with ExitStack() as stack:
        with on_cpus(server_cpus):
            url = stack.enter_context(ers_server(env))
        # Per-agent breaker settings are bounded (1,000 consecutive failures at most), and a
        # storm phase fails more calls than that: the breaker is disabled instead.
        disable = f"{url}/api/emergency/circuit-breaker/budget/disable"
        httpx.post(disable, timeout=10).raise_for_status()
        stack.enter_context(on_cpus(load_cpus))
        asyncio.run(_run(url, 300))  # warm-up
        for phase in range(2 * phases):
            mode = ("calm", "storm")[(phase + number) % 2]
            _storm(url, mode == "storm")
            asyncio.run(_run(url, SETTLE_REQUESTS))
            measured, degraded = asyncio.run(_run(url, requests // phases))
            p99[mode].append(_p99_ms(measured))
            if mode == "calm":
                assert degraded == 0, f"{degraded} budget chats degraded in a calm phase"
            failed += degraded
        incidents = httpx.get(f"{url}/api/emergency/incidents", timeout=10).json()
        assert incidents["total"] >= 1, "the storm produced no incident"
    return {
        "calm": statistics.median(p99["calm"]),
        "storm": statistics.median(p99["storm"]),
        "phases": p99,
        "failed": failed,
    }


def measure(rounds: int = 5, requests: int = 3000, phases: int = 4) -> dict[str, object]:
    """``requests`` healthy chats per side and round, in ``phases`` phases per side."""
    env = {"ERS_AUTO_RESPONSE_ENABLED": "false"}
    results = [measure_round(env, number, requests, phases) for number in range(rounds)]
    calm = [result["calm"] for result in results]
    storm = [result["storm"] for result in results]
    paired = [s / c for s, c in zip(storm, calm, strict=True)]
    return {
        "calm_p99_ms": statistics.median(calm),
        "storm_p99_ms": statistics.median(storm),
        "calm_runs": calm,
        "storm_runs": storm,
        "paired_ratios": paired,
        "storm_failed_calls": statistics.median(result["failed"] for result in results),
        "ratio_of_medians": statistics.median(storm) / statistics.median(calm),
        "results": results,
        "error_storm_p99_ratio": statistics.median(paired),
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--phases", type=int, default=4)
    args = parser.parse_args(argv)
    figures = measure(args.rounds, args.requests, args.phases)
    for number, result in enumerate(figures["results"]):  # type: ignore[arg-type]
        for mode in ("calm", "storm"):
            shown = " ".join(f"{v:.2f}" for v in result["phases"][mode])
            print(f"round {number + 1} {mode:5} p99 ms per phase: {shown}")
    shown = {key: " ".join(f"{v:.2f}" for v in figures[key]) for key in ("calm_runs", "storm_runs")}
    ratios = " ".join(f"{v:.3f}" for v in figures["paired_ratios"])  # type: ignore[attr-defined]
    print(f"healthy-agent /chat p99, calm:  {figures['calm_p99_ms']:.2f} ms (median)")
    print(
        f"healthy-agent /chat p99, storm: {figures['storm_p99_ms']:.2f} ms (median; "
        f"{figures['storm_failed_calls']:.0f} failing budget calls in a round)"
    )
    print(f"storm/calm p99 per round: {ratios}; of the medians {figures['ratio_of_medians']:.3f}")
    print(f"anchor calm p99 ms per round: {shown['calm_runs']}; storm: {shown['storm_runs']}")
    print(f"error_storm_p99_ratio={figures['error_storm_p99_ratio']:.3f}")
    return figures


if __name__ == "__main__":
    main()
