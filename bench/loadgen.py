"""A small HTTP/1.1 load generator on raw asyncio streams, for loopback benchmarks.

Keep-alive connections, each sending requests one after another; bounded by a request count
and a time limit, so it always stops by itself. Cheaper per request than an HTTP client
library, so the server, not the generator, is what gets measured.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies_s: list[float]
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return ordered[index] * 1000

    def summary(self) -> dict[str, float]:
        return {
            "rps": round(self.throughput, 1),
            "p50_ms": round(self.percentile_ms(0.50), 2),
            "p99_ms": round(self.percentile_ms(0.99), 2),
            "errors": self.errors,
            "non_2xx": sum(n for code, n in self.statuses.items() if not 200 <= code < 300),
        }


def build_post(host: str, path: str, body: dict[str, object]) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + payload


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    body = await reader.readexactly(length) if length else b""
    return status, body


async def run_load(
    url: str,
    make_request: Callable[[int], bytes],
    *,
    connections: int = 16,
    total_requests: int = 2000,
    time_limit_s: float = 30.0,
    check: Callable[[int, int, bytes], None] | None = None,
) -> LoadResult:
    """Send ``total_requests`` over ``connections`` keep-alive connections, or stop at the
    time limit, whichever comes first. ``check(n, status, body)`` sees every reply."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    counter = iter(range(total_requests))
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors = 0
    deadline = time.perf_counter() + time_limit_s

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for n in counter:
                if time.perf_counter() > deadline:
                    break
                started = time.perf_counter()
                try:
                    writer.write(make_request(n))
                    status, body = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                latencies.append(time.perf_counter() - started)
                statuses[status] += 1
                if check is not None:
                    check(n, status, body)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    return LoadResult(len(latencies), elapsed, latencies, statuses, errors)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
