"""The stores check: each state store (and the incident store) writes, reads back and deletes
a probe row. The probes run side by side, and the check waits ``PROBE_WAIT_S`` for them, no
longer: a store that does not answer by then (a frozen database server, a hung disk) is not
writable, and its probe goes on alone. A cancelled statement on a frozen PostgreSQL server
takes psycopg up to 10 s more to give up, so waiting for it would make a report take that
long. While a probe has not answered, the next check waits for it rather than start another,
so frozen probes never pile up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Protocol

from service.errors import StorePaused, StoreUnavailable
from service.health.checks import CheckResult, Status
from service.stores.registry import ComponentStore

# How long the check waits for the stores' probes: a chat waits as long for a connection.
PROBE_WAIT_S = 3.0


class StoreNotWritable(OSError):
    """A state store cannot be written."""


class Probed(Protocol):
    async def probe_writable(self) -> None: ...


def _retrieve(task: asyncio.Task[None]) -> None:
    """A probe's error is read by the check that waits for it, or by nobody (its last check
    gave up on it): read here, so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


class StoresCheck:
    name = "stores"

    def __init__(
        self, stores: Mapping[str, ComponentStore | Probed], wait_s: float = PROBE_WAIT_S
    ) -> None:
        self._stores = stores
        self._wait_s = wait_s
        # Each store's probe, with when it began: one at a time per store.
        self._probes: dict[str, tuple[asyncio.Task[None], float]] = {}

    def _probe(self, component: str) -> tuple[asyncio.Task[None], float]:
        running = self._probes.get(component)
        if running is None or running[0].done():
            task = asyncio.ensure_future(self._stores[component].probe_writable())
            task.add_done_callback(_retrieve)
            running = self._probes[component] = (task, time.monotonic())
        return running

    async def run(self) -> CheckResult:
        probes = {component: self._probe(component) for component in self._stores}
        await asyncio.wait([task for task, _ in probes.values()], timeout=self._wait_s)
        failing: dict[str, str] = {}
        paused: dict[str, str] = {}
        for component, (task, began) in probes.items():
            if not task.done():
                waited = time.monotonic() - began
                failing[component] = f"no answer to its write probe for {waited:.1f} s"
                continue
            try:
                task.result()
            except StorePaused as exc:  # a rollback's, for a moment: no failure
                paused[component] = f"paused: {exc.reason}"
            except StoreUnavailable as exc:
                failing[component] = exc.reason
        figures = {name: failing.get(name) or paused.get(name, "writable") for name in self._stores}
        if failing:
            names = ", ".join(sorted(failing))
            # The count, not the names, in the error: one incident for the check whichever
            # stores fail (names would make each set of stores an incident of its own).
            error = StoreNotWritable(
                f"{len(failing)} of {len(self._stores)} state stores not writable"
            )
            return CheckResult(
                self.name, Status.UNHEALTHY, f"not writable: {names}", figures, error
            )
        if paused:
            names = ", ".join(sorted(paused))
            return CheckResult(
                self.name, Status.DEGRADED, f"paused for a rollback: {names}", figures
            )
        return CheckResult(self.name, Status.HEALTHY, "every store writable", figures)
