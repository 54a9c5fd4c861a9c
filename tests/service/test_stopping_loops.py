"""A background loop that waits for a wake-up with a time limit stops when told, even when the
wake-up comes in the same moment as the stop.

In Python 3.11, ``asyncio.wait_for`` returns the awaited result instead of raising when the
cancellation and the result arrive together (CPython gh-86296): a ``while True`` loop around it
never sees its stop, and shutdown waits for it forever. The loops wait with
``asyncio.timeout``, which keeps the cancellation; nothing in the product may go back to
``wait_for``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from opentelemetry.trace import NoOpTracer

from service.health.monitor import HealthMonitor

ROOT = Path(__file__).resolve().parents[2]


async def test_the_health_loop_stops_when_woken_in_the_same_moment() -> None:
    for _ in range(50):
        monitor = HealthMonitor([], NoOpTracer(), interval_s=30)
        monitor.start()
        for _ in range(3):  # into its wait for the next round
            await asyncio.sleep(0)
        monitor.evaluate_soon()
        await asyncio.sleep(0)  # the wake-up is on its way when the stop comes
        # Before: with wait_for this hung every time, the loop going round again.
        async with asyncio.timeout(5):
            await monitor.stop()


def test_no_product_code_waits_with_wait_for() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("service", "telemetry", "backup")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "asyncio.wait_for(" in line
    ]
    assert not found, f"use asyncio.timeout instead of asyncio.wait_for: {', '.join(found)}"
