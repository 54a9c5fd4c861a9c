"""The stores check waits a bounded time for the stores' probes, and starts no second probe of
a store whose first has not answered (the end-to-end case: a frozen PostgreSQL server, in
tests/e2e/test_database_outage.py)."""

from __future__ import annotations

import asyncio

from service.errors import StoreUnavailable
from service.health.checks import Status
from service.health.stores_check import StoresCheck


class HangingStore:
    def __init__(self) -> None:
        self.probes = 0
        self.answer = asyncio.Event()

    async def probe_writable(self) -> None:
        self.probes += 1
        await self.answer.wait()


class FailingStore:
    async def probe_writable(self) -> None:
        raise StoreUnavailable("budgets", "disk full")


async def test_a_store_that_does_not_answer_is_not_writable_and_probed_once() -> None:
    hanging = HangingStore()
    check = StoresCheck({"profiles": hanging, "budgets": FailingStore()}, wait_s=0.05)
    for _ in range(3):
        result = await check.run()
        assert result.status is Status.UNHEALTHY
        assert result.reason == "not writable: budgets, profiles"
        assert result.figures["profiles"].startswith("no answer to its write probe for ")
        assert result.figures["budgets"] == "disk full"
    assert hanging.probes == 1  # the later checks waited for the first probe
    hanging.answer.set()
    result = await check.run()
    assert result.figures["profiles"] == "writable" and hanging.probes == 1
    result = await check.run()  # the answered probe is not reused
    assert result.figures["profiles"] == "writable" and hanging.probes == 2
