"""The health monitor's report as the status reads it: refreshed live checks never bring an
older round of the other checks back."""

from __future__ import annotations

import asyncio

from opentelemetry.trace import NoOpTracerProvider

from service.health.checks import CheckResult, Status
from service.health.monitor import HealthMonitor


class Disk:
    name = "disk"

    def __init__(self) -> None:
        self.status = Status.HEALTHY

    async def run(self) -> CheckResult:
        return CheckResult(self.name, self.status, self.status.value)


class Breakers:
    """A live check whose next run waits at ``gate`` (once), saying so by ``entered``."""

    name = "breakers"
    live = True

    def __init__(self) -> None:
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def run(self) -> CheckResult:
        gate, self.gate = self.gate, None
        if gate is not None:
            self.entered.set()
            await gate.wait()
        return CheckResult(self.name, Status.HEALTHY, "all closed")


async def test_a_refresh_keeps_a_full_report_published_while_it_ran() -> None:
    disk, breakers = Disk(), Breakers()
    monitor = HealthMonitor([disk, breakers], NoOpTracerProvider().get_tracer("test"))
    await monitor.evaluate()
    gate = breakers.gate = asyncio.Event()
    refreshing = asyncio.create_task(monitor.refresh())
    await breakers.entered.wait()
    disk.status = Status.UNHEALTHY  # a full round meanwhile finds the disk failing
    assert (await monitor.evaluate()).overall is Status.UNHEALTHY
    gate.set()
    refreshed = await refreshing
    # Before: the refresh published the round it began with, and the disk read healthy.
    assert refreshed is not None and refreshed.checks["disk"].status is Status.UNHEALTHY
    assert monitor.last is refreshed and refreshed.overall is Status.UNHEALTHY
