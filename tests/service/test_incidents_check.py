"""The incidents check sums up the active incidents; while the store cannot be read, it says
that its counts are the last ones read, and is never healthy on them."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider

import service.incidents.service as incident_service
from service.health.checks import IncidentsCheck, Status
from service.incidents.service import IncidentService
from service.incidents.store import IncidentStore
from service.tasks import cancel_and_wait

UNREAD = "the incident store has not been readable for 4 s: incidents store unavailable"


def run(check: IncidentsCheck) -> tuple[Status, str]:
    result = asyncio.run(check.run())
    return result.status, result.reason


def test_counts_read_now_decide_as_always() -> None:
    assert run(IncidentsCheck(lambda: {"medium": 1})) == (Status.HEALTHY, "1 active incidents")
    assert run(IncidentsCheck(lambda: {"high": 1}))[0] is Status.DEGRADED
    assert run(IncidentsCheck(lambda: {"critical": 1})) == (
        Status.UNHEALTHY,
        "a critical incident is active",
    )


def test_counts_that_could_not_be_read_again_say_so() -> None:
    stale = IncidentsCheck(lambda: {"medium": 1}, lambda: UNREAD)
    assert run(stale) == (Status.DEGRADED, f"1 active incidents when last read; {UNREAD}")
    none = IncidentsCheck(dict, lambda: UNREAD)
    assert run(none)[0] is Status.DEGRADED
    critical = IncidentsCheck(lambda: {"critical": 2}, lambda: UNREAD)
    assert run(critical) == (
        Status.UNHEALTHY,
        f"a critical incident is active (2 active incidents when last read; {UNREAD})",
    )


class FrozenCounts(IncidentStore):
    """An incident store whose server froze: a read of the counts waits and raises nothing,
    until the test lets it go."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reading = threading.Event()
        self.thaw = threading.Event()

    def active_counts_by_severity(self) -> dict[str, int]:
        self.reading.set()
        self.thaw.wait()
        return {"high": 1}


def test_counts_whose_read_does_not_answer_are_not_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The read is unanswered at once here (no waiting in a test), as after the wait live.
    monkeypatch.setattr(incident_service, "COUNTS_ANSWER_WAIT_S", 0.0, raising=False)
    store = FrozenCounts(tmp_path / "incidents.sqlite3")
    meter = MeterProvider().get_meter("test")

    async def scenario() -> tuple[str | None, Status, str]:
        service = IncidentService(store, meter, rules_path=None, cache_active_counts=True)
        refresh = asyncio.get_running_loop().create_task(service.run_counts_refresh())
        try:
            await asyncio.to_thread(store.reading.wait)
            check = IncidentsCheck(service.active_counts, service.counts_unread)
            result = await check.run()
            return service.counts_unread(), result.status, result.reason
        finally:
            store.thaw.set()
            await cancel_and_wait(refresh)
            service.shutdown()

    unread, status, reason = asyncio.run(scenario())
    assert unread is not None and "has not answered a read for" in unread
    assert status is Status.DEGRADED, reason
    assert reason.startswith("0 active incidents when last read; "), reason
