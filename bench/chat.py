"""/chat throughput of the real uvicorn server with telemetry on and off, side by side.

Rounds alternate on/off so both see the same machine noise; medians are compared.
Last line: ``chat_telemetry_ratio=<on/off throughput>`` (target >= 0.85).
"""

from __future__ import annotations

import argparse
import asyncio

from bench.loadgen import build_post, median, run_load
from bench.server import ers_server

MESSAGES = ["plan my meals", "make me a workout plan", "budget report", "hello"]


def request_factory(host: str):  # noqa: ANN201
    prepared = [
        build_post(host, "/chat", {"message": m, "userId": f"bench-{i % 50}"})
        for i, m in enumerate(MESSAGES * 50)
    ]
    return lambda n: prepared[n % len(prepared)]


def measure(rounds: int = 5, requests: int = 3000, connections: int = 16) -> dict[str, object]:
    results: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for _ in range(rounds):
        for mode in ("on", "off"):
            env = {"ERS_TELEMETRY_ENABLED": "true" if mode == "on" else "false"}
            with ers_server(env) as url:
                host = url.removeprefix("http://")
                # Warm up, then measure.
                asyncio.run(run_load(url, request_factory(host), total_requests=300))
                result = asyncio.run(
                    run_load(
                        url,
                        request_factory(host),
                        connections=connections,
                        total_requests=requests,
                        time_limit_s=60,
                    )
                )
                results[mode].append(result.summary())
    summary = {
        mode: {
            key: median([r[key] for r in runs]) for key in ("rps", "p50_ms", "p99_ms", "non_2xx")
        }
        for mode, runs in results.items()
    }
    ratio = summary["on"]["rps"] / summary["off"]["rps"]
    return {"summary": summary, "ratio": ratio, "rounds": rounds, "requests": requests}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args(argv)
    result = measure(args.rounds, args.requests)
    print(f"{'telemetry':<10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}")
    for mode, figures in result["summary"].items():  # type: ignore[union-attr]
        print(
            f"{mode:<10}{figures['rps']:>10.1f}{figures['p50_ms']:>10.2f}"
            f"{figures['p99_ms']:>10.2f}{figures['non_2xx']:>10.0f}"
        )
    print(f"chat_telemetry_ratio={result['ratio']:.3f}")
    return result


if __name__ == "__main__":
    main()
