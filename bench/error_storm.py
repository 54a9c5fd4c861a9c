"""Does an error storm slow the healthy agents? /chat p99 of healthy agents while another
agent fails every call, against the same traffic with that agent healthy, side by side.

Both runs send the same two streams at once: healthy-agent chats (measured) and budget chats
(the storm). In the storm run every budget call fails inside its guard (its breaker is kept
from opening, so every failure is an error span through the incident pipeline); in the calm
run the same budget chats succeed. A round is a pair, calm and storm one after the other
(which goes first alternates), each on a fresh server; the ratio is the median of the
rounds' storm/calm p99 ratios, so a slow moment of the machine weighs on one pair, not on
one side. The calm p99s (the anchor) are printed on the line above the last:
``error_storm_p99_ratio=<median of paired storm/calm>`` (target <= 1.10).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics

import httpx

from bench.loadgen import build_post, run_load
from bench.server import ers_server

HEALTHY = ("plan my meals", "make me a workout plan", "hello")
NEVER_TRIP = {"failure_threshold": 10**9, "sliding_window_size": 10**6, "minimum_calls": 10**6}


async def _run(url: str, requests: int) -> tuple[float, float, int]:
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
    return measured.percentile_ms(0.99), measured.percentile_ms(0.50), degraded


def measure(rounds: int = 3, requests: int = 3000) -> dict[str, object]:
    env = {
        "ERS_AUTO_RESPONSE_ENABLED": "false",
        "ERS_AGENT_BREAKERS": json.dumps({"budget": NEVER_TRIP}),
    }
    p99: dict[str, list[float]] = {"calm": [], "storm": []}
    storm_failures = []
    for number in range(rounds):
        for mode in ("calm", "storm") if number % 2 == 0 else ("storm", "calm"):
            with ers_server(env) as url:
                if mode == "storm":
                    httpx.post(
                        f"{url}/api/emergency/simulate-error",
                        json={"component": "budget", "errorType": "agent"},
                        timeout=10,
                    ).raise_for_status()
                asyncio.run(_run(url, 300))  # warm-up
                tail, _, degraded = asyncio.run(_run(url, requests))
                p99[mode].append(tail)
                if mode == "storm":
                    storm_failures.append(degraded)
                    incidents = httpx.get(f"{url}/api/emergency/incidents", timeout=10).json()
                    assert incidents["total"] >= 1, "the storm produced no incident"
    paired = [s / c for s, c in zip(p99["storm"], p99["calm"], strict=True)]
    return {
        "calm_p99_ms": statistics.median(p99["calm"]),
        "storm_p99_ms": statistics.median(p99["storm"]),
        "calm_runs": p99["calm"],
        "storm_runs": p99["storm"],
        "paired_ratios": paired,
        "storm_failed_calls": statistics.median(storm_failures),
        "ratio_of_medians": statistics.median(p99["storm"]) / statistics.median(p99["calm"]),
        "error_storm_p99_ratio": statistics.median(paired),
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args(argv)
    figures = measure(args.rounds, args.requests)
    shown = {key: " ".join(f"{v:.2f}" for v in figures[key]) for key in ("calm_runs", "storm_runs")}
    ratios = " ".join(f"{v:.3f}" for v in figures["paired_ratios"])  # type: ignore[attr-defined]
    print(f"healthy-agent /chat p99, calm:  {figures['calm_p99_ms']:.2f} ms (median)")
    print(
        f"healthy-agent /chat p99, storm: {figures['storm_p99_ms']:.2f} ms (median; "
        f"{figures['storm_failed_calls']:.0f} failing budget calls in a storm run)"
    )
    print(f"paired storm/calm ratios: {ratios}; of medians {figures['ratio_of_medians']:.3f}")
    print(f"anchor calm p99 ms per pair: {shown['calm_runs']}; storm: {shown['storm_runs']}")
    print(f"error_storm_p99_ratio={figures['error_storm_p99_ratio']:.3f}")
    return figures


if __name__ == "__main__":
    main()
