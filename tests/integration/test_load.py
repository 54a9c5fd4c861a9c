"""A bounded load test on loopback: many concurrent clients, 30% of agent calls failing.

Zero 5xx, every request answered (normally or degraded), every answered turn in the
conversations store, memory bounded. The default run is short; ERS_LONG_TESTS=1 runs the
full 200 clients for 60 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from pathlib import Path

import httpx
import psutil

from bench.loadgen import build_post, run_load
from tests.conftest import start_ers

LONG = os.environ.get("ERS_LONG_TESTS") == "1"
CLIENTS = 200 if LONG else 50
SECONDS = 60.0 if LONG else 8.0
MAX_REQUESTS = 400_000 if LONG else 20_000
MESSAGES = ("plan my meals", "make me a workout plan", "budget report", "hello")


def test_load_with_injected_failures(tmp_path: Path) -> None:
    ers = start_ers(tmp_path, env={"ERS_BREAKER_OPEN_DURATION_S": "2"})
    try:
        with httpx.Client(base_url=ers.url, timeout=10) as http:
            for agent in ("router", "nutrition", "workout", "budget"):
                http.post(
                    "/api/emergency/simulate-error",
                    json={"component": agent, "errorType": "agent", "failureRate": 0.3},
                ).raise_for_status()
        host = ers.url.removeprefix("http://")
        answered: dict[int, dict[str, object]] = {}

        def request(n: int) -> bytes:
            message = f"{MESSAGES[n % len(MESSAGES)]} #{n}"
            return build_post(host, "/chat", {"message": message, "userId": f"load-{n % 97}"})

        def check(n: int, status: int, body: bytes) -> None:
            if status == 200:
                answered[n] = json.loads(body)

        result = asyncio.run(
            run_load(
                ers.url,
                request,
                connections=CLIENTS,
                total_requests=MAX_REQUESTS,
                time_limit_s=SECONDS,
                check=check,
            )
        )
        rss_mb = psutil.Process(ers.process.pid).memory_info().rss / 1e6
        five_xx = sum(n for code, n in result.statuses.items() if code >= 500)
        degraded = sum(1 for reply in answered.values() if reply["emergency"])
        summary = result.summary()
        print(
            f"\nload: {CLIENTS} clients, {result.seconds:.1f} s, {result.requests} requests, "
            f"{summary['rps']} req/s, p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, "
            f"degraded {degraded}, rss {rss_mb:.0f} MB"
        )
        print(f"load_5xx={five_xx}")

        assert result.requests > CLIENTS
        assert result.errors == 0
        assert five_xx == 0
        assert set(result.statuses) == {200}
        assert len(answered) == result.requests
        assert 0 < degraded < result.requests
        assert rss_mb < 300

        db = sqlite3.connect(tmp_path / "data" / "conversations.sqlite3")
        stored = {row[0] for row in db.execute("SELECT message FROM turns")}
        missing = [n for n in answered if f"{MESSAGES[n % len(MESSAGES)]} #{n}" not in stored]
        assert missing == []
    finally:
        assert ers.stop() == 0


def test_sigterm_during_load_finishes_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    ers = start_ers(tmp_path)
    host = ers.url.removeprefix("http://")
    answered: dict[int, int] = {}

    def request(n: int) -> bytes:
        return build_post(host, "/chat", {"message": f"budget report #{n}", "userId": "u"})

    def check(n: int, status: int, body: bytes) -> None:
        answered[n] = status

    async def load_then_terminate() -> float:
        load = asyncio.ensure_future(
            run_load(
                ers.url,
                request,
                connections=20,
                total_requests=50_000,
                time_limit_s=6,
                check=check,
            )
        )
        await asyncio.sleep(1.5)
        ers.process.terminate()
        started = asyncio.get_running_loop().time()
        while ers.process.poll() is None:
            await asyncio.sleep(0.05)
        exited_after = asyncio.get_running_loop().time() - started
        await asyncio.gather(load, return_exceptions=True)
        return exited_after

    exited_after = asyncio.run(load_then_terminate())
    print(f"\nexited {exited_after:.2f} s after SIGTERM with {len(answered)} replies")
    assert ers.process.returncode == 0, ers.log()[-2000:]
    assert exited_after < 10  # the configured graceful-shutdown limit
    assert answered and set(answered.values()) == {200}
    db = sqlite3.connect(tmp_path / "data" / "conversations.sqlite3")
    stored = {row[0] for row in db.execute("SELECT message FROM turns")}
    assert all(f"budget report #{n}" in stored for n in answered)
    assert "Traceback" not in ers.log()
