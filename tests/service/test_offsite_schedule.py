"""The off-host copy job follows the fleet's jobs lock: the replica that takes the lock
copies at once, not an interval later, and a copy under way when the lock is lost stops, so
that the new holder's copy never runs beside it. A fake lock and copier; an interval of an
hour that no test waits for."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from backup.errors import BackupError
from backup.offsite import CopyResult
from service.backups.offsite import OffsiteMetrics, OffsiteRetention, run_offsite_copies

HOUR_S = 3600.0
WAIT_S = 10.0  # a bound on waits for what should happen at once, never a measured time


class Lock:
    """The little of FleetLeader the copy job reads; `looked_while_free` counts the times
    the job found the lock held by another replica."""

    def __init__(self, held: bool) -> None:
        self._held = held
        self._taken, self._free = asyncio.Event(), asyncio.Event()
        self.looked_while_free = 0
        (self._taken if held else self._free).set()

    @property
    def is_leader(self) -> bool:
        if not self._held:
            self.looked_while_free += 1
        return self._held

    async def wait_leader(self) -> None:
        await self._taken.wait()

    async def wait_not_leader(self) -> None:
        await self._free.wait()

    def take(self) -> None:
        self._held = True
        self._free.clear()
        self._taken.set()

    def lose(self) -> None:
        self._held = False
        self._taken.clear()
        self._free.set()


class Copier:
    """Counts the copies started; each ends when `finish` is set (at once by default)."""

    def __init__(self, blocking: bool = False) -> None:
        self.destination = SimpleNamespace(repository=str(Path("/srv/offsite")))
        self.started = 0
        self.copying = asyncio.Event()
        self.finish = asyncio.Event()
        self.cancelled = 0
        if not blocking:
            self.finish.set()

    async def copy(self) -> CopyResult:
        self.started += 1
        self.copying.set()
        try:
            await self.finish.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.copying.clear()
        return CopyResult(copied=1, skipped=0, duration_s=0.0)

    async def forget(self, keep_last: int, tag: str) -> tuple[str, ...]:
        return ()  # the off-host retention after each copy: nothing to forget here

    async def prune(self) -> None:
        return None


def backups() -> Any:
    @contextlib.asynccontextmanager
    async def sharing_repository() -> AsyncIterator[None]:
        yield

    connected = asyncio.Event()
    connected.set()

    async def verify_repository() -> None:
        return None

    manager = SimpleNamespace(
        sharing_repository=sharing_repository,
        verify_repository=verify_repository,
        backend=SimpleNamespace(tag="ers"),
    )
    settings = SimpleNamespace(prune_interval_hours=24, offsite_max_backups=None, max_backups=10)
    return SimpleNamespace(connected=connected, require=lambda: manager, settings=settings)


@pytest.fixture
def metrics() -> OffsiteMetrics:
    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("test")
    return OffsiteMetrics(meter, HOUR_S)


async def until(condition: Any) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def copy_job(copier: Copier, metrics: OffsiteMetrics, lock: Lock) -> AsyncIterator[None]:
    job = asyncio.create_task(run_offsite_copies(backups(), copier, metrics, lock))  # type: ignore[arg-type]
    try:
        yield
    finally:
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job


async def test_the_first_copy_runs_once_the_replica_takes_the_lock_not_an_interval_later(
    metrics: OffsiteMetrics,
) -> None:
    copier, lock = Copier(), Lock(held=False)
    async with copy_job(copier, metrics, lock):
        # At start-up the jobs lock is taken after the repository answers.
        await until(lambda: lock.looked_while_free > 0)
        assert copier.started == 0
        lock.take()
        await until(lambda: metrics.last_success is not None)
        assert copier.started == 1


async def test_a_replica_that_takes_the_lock_over_copies_at_once(
    metrics: OffsiteMetrics,
) -> None:
    copier, lock = Copier(), Lock(held=True)
    async with copy_job(copier, metrics, lock):
        await until(lambda: copier.started == 1)
        lock.lose()  # another replica holds the lock now...
        await until(lambda: lock.looked_while_free > 0)
        assert copier.started == 1
        lock.take()  # ...and this one takes it back: the next copy is not an hour away
        await until(lambda: copier.started == 2)


async def test_a_copy_under_way_stops_when_the_replica_loses_the_lock(
    metrics: OffsiteMetrics,
) -> None:
    copier, lock = Copier(blocking=True), Lock(held=True)
    async with copy_job(copier, metrics, lock):
        await asyncio.wait_for(copier.copying.wait(), WAIT_S)
        lock.lose()
        await until(lambda: copier.cancelled == 1)
        assert copier.started == 1
        assert metrics.last_success is None  # stopped, neither a success nor a failure


class PruneFailsOnce(Copier):
    def __init__(self) -> None:
        super().__init__()
        self.prunes = 0

    async def prune(self) -> None:
        self.prunes += 1
        if self.prunes == 1:
            raise BackupError("the off-host repository is locked")


async def test_a_failed_prune_stands_until_a_prune_succeeds(metrics: OffsiteMetrics) -> None:
    """The next copy's forget, which succeeded, reported the retention healthy while the
    failed prune waited for its retry: with copies more often than that, the alert on it
    never held long enough to fire, as the repository grew."""
    copier = PruneFailsOnce()
    retention = OffsiteRetention(10, "ers", prune_every_s=HOUR_S, next_prune=0.0)
    await retention.after_copy(copier, metrics)  # type: ignore[arg-type]
    assert metrics.retention_failed_at > 0 and metrics.retention_succeeded_at is None
    await retention.after_copy(copier, metrics)  # type: ignore[arg-type]  # prune not due yet
    assert metrics.retention_succeeded_at is None
    retention.next_prune = 0.0
    await retention.after_copy(copier, metrics)  # type: ignore[arg-type]
    assert copier.prunes == 2
    assert metrics.retention_succeeded_at is not None
    assert metrics.retention_succeeded_at >= metrics.retention_failed_at
