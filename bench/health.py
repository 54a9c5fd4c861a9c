"""Cost of the status and health endpoints while /chat is under load, and the service's
memory after 100,000 chats with 30% of agent calls failing.

The /chat load runs in a process of its own: a probe sharing the load generator's saturated
event loop would time that loop's queue, not the service. The probes are what an operator's
separate client sees.

Last lines: ``status_p99_ms=`` (target < 20) and ``rss_after_load_mb=`` (target < 200).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
from typing import Any

import httpx
import psutil

from bench.loadgen import build_post, run_load
from bench.server import ers_server

MESSAGES = ("plan my meals", "make me a workout plan", "budget report", "hello")


def _percentiles(samples_ms: list[float]) -> tuple[float, float]:
    ordered = sorted(samples_ms)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def _probe(url: str, path: str, count: int, pause_s: float) -> list[float]:
    samples = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        for _ in range(count):
            started = time.perf_counter()
            reply = await http.get(path)
            samples.append((time.perf_counter() - started) * 1000)
            assert reply.status_code in (200, 503), reply.text
            await asyncio.sleep(pause_s)
    return samples


class _ChatRequests:
    """Picklable request factory for the load process."""

    def __init__(self, host: str) -> None:
        self.host = host

    def __call__(self, n: int) -> bytes:
        return build_post(self.host, "/chat", {"message": MESSAGES[n % 4], "userId": f"u{n % 50}"})


def _chat_load(url: str, stop: Any, results: multiprocessing.Queue) -> None:
    """Keep 16 connections busy with /chat in rounds of about a second until ``stop``."""
    request = _ChatRequests(url.removeprefix("http://"))
    requests, seconds = 0, 0.0
    while not stop.is_set():
        result = asyncio.run(
            run_load(url, request, connections=16, total_requests=10**7, time_limit_s=1.0)
        )
        requests += result.requests
        seconds += result.seconds
    results.put(requests / seconds if seconds else 0.0)


async def _probes(url: str, probes: int) -> dict[str, tuple[float, float]]:
    status = await _probe(url, "/api/emergency/status", probes, 0.02)
    health = await _probe(url, "/api/emergency/health?refresh=true", max(10, probes // 10), 0.05)
    return {"status": _percentiles(status), "health": _percentiles(health)}


def _under_load(url: str, probes: int) -> tuple[dict[str, tuple[float, float]], float]:
    """Probe status and health while a separate process keeps /chat busy; returns the
    percentiles and the chat throughput meanwhile."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = context.Queue()
    stop = context.Event()
    load = context.Process(target=_chat_load, args=(url, stop, results), daemon=True)
    load.start()
    try:
        time.sleep(2)  # the load process starts and reaches a steady state
        timings = asyncio.run(_probes(url, probes))
    finally:
        stop.set()
    chat_rps = results.get(timeout=30)
    load.join(10)
    return timings, chat_rps


def _server_pid(url: str) -> int:
    port = int(url.rsplit(":", 1)[1])
    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            return conn.pid
    raise RuntimeError("cannot find the server process")


def measure(chats: int = 100_000, probes: int = 300) -> dict[str, float]:
    with ers_server({"ERS_BREAKER_OPEN_DURATION_S": "2"}) as url:
        rss_start_mb = psutil.Process(_server_pid(url)).memory_info().rss / 1e6
        timings, chat_rps_during_probes = _under_load(url, probes)
        with httpx.Client(base_url=url, timeout=10) as http:
            for agent in ("router", "nutrition", "workout", "budget"):
                http.post(
                    "/api/emergency/simulate-error",
                    json={"component": agent, "errorType": "agent", "failureRate": 0.3},
                ).raise_for_status()
        host = url.removeprefix("http://")

        def request(n: int) -> bytes:
            body = {"message": f"{MESSAGES[n % 4]} {n}", "userId": f"user-{n % 1000}"}
            return build_post(host, "/chat", body)

        result = asyncio.run(
            run_load(url, request, connections=16, total_requests=chats, time_limit_s=600)
        )
        rss_mb = psutil.Process(_server_pid(url)).memory_info().rss / 1e6
    return {
        "status_p50_ms": timings["status"][0],
        "status_p99_ms": timings["status"][1],
        "health_p50_ms": timings["health"][0],
        "health_p99_ms": timings["health"][1],
        "chat_rps_during_probes": chat_rps_during_probes,
        "chats": result.requests,
        "chat_rps": result.throughput,
        "rss_after_load_mb": rss_mb,
        "rss_at_start_mb": rss_start_mb,
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=100_000)
    args = parser.parse_args(argv)
    figures = measure(args.chats)
    print(f"{'endpoint under /chat load':<36}{'p50 ms':>10}{'p99 ms':>10}")
    print(
        f"{'GET /api/emergency/status':<36}{figures['status_p50_ms']:>10.2f}"
        f"{figures['status_p99_ms']:>10.2f}"
    )
    print(
        f"{'GET /api/emergency/health (full)':<36}{figures['health_p50_ms']:>10.2f}"
        f"{figures['health_p99_ms']:>10.2f}"
    )
    print(f"/chat load during the probes: {figures['chat_rps_during_probes']:.0f} req/s")
    print(
        f"anchor GET /api/emergency/status p50 {figures['status_p50_ms']:.2f} ms under "
        f"{figures['chat_rps_during_probes']:.0f} /chat req/s; the full health check p99 "
        f"{figures['health_p99_ms']:.2f} ms"
    )
    print(f"status_p99_ms={figures['status_p99_ms']:.2f}")
    print(
        f"anchor RSS at start {figures['rss_at_start_mb']:.1f} MB; after {figures['chats']} "
        f"chats at {figures['chat_rps']:.0f}/s with 30% failing"
    )
    print(f"rss_after_load_mb={figures['rss_after_load_mb']:.1f}")
    return figures


if __name__ == "__main__":
    main()
