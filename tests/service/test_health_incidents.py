"""A health check that crosses its line raises one incident through the span pipeline, named
after the check with its figure in the message, and the incident is resolved once the check
has been healthy for the set time. The health endpoint's own 5xx server span is never one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode

from service.health.checks import (
    CheckResult,
    HealthCheckFailed,
    MemoryCheck,
    MemoryReading,
)
from service.health.checks import Status as Health
from service.health.incidents import HealthIncidents
from service.health.monitor import HealthMonitor
from service.health.stores_check import StoresCheck
from service.incidents.service import UNCLASSIFIED_ROUTES
from service.incidents.store import IncidentStore
from service.stores import Stores
from telemetry.classifier import load_rules
from telemetry.incident_processor import IncidentProcessor, server_span_of

LIMIT = 1_000_000_000


class Pipeline:
    def __init__(self, path: Path) -> None:
        self.store = IncidentStore(path)
        self.processor = IncidentProcessor(
            self.store, load_rules(), ignore=server_span_of(UNCLASSIFIED_ROUTES)
        )
        self.provider = TracerProvider()
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("test")

    def incidents(self, status: str | None = None) -> list:
        self.processor.force_flush()
        return self.store.list(status=status)[0]

    def close(self) -> None:
        self.processor.shutdown()
        self.store.close()


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    built = Pipeline(tmp_path / "incidents.sqlite3")
    yield built
    built.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Flaky:
    name = "flaky"

    def __init__(self) -> None:
        self.error: Exception | None = None

    async def run(self) -> CheckResult:
        if self.error is not None:
            raise self.error
        return CheckResult(self.name, Health.HEALTHY, "fine")


async def test_a_check_over_its_line_is_one_incident_resolved_once_healthy_long_enough(
    pipeline: Pipeline,
) -> None:
    usage = [0.93]
    memory = MemoryCheck(lambda: MemoryReading(int(LIMIT * usage[0]), LIMIT, "test"))
    monitor = HealthMonitor([memory], pipeline.tracer)
    clock = Clock()
    resolver = HealthIncidents(pipeline.store, resolve_after_s=60, clock=clock)
    monitor.subscribe(resolver.on_report)

    await monitor.evaluate()
    usage[0] = 0.97
    clock.now += 30
    await monitor.evaluate()
    (incident,) = pipeline.incidents()
    assert incident.span_name == "health.memory"
    assert incident.count == 2
    assert "97%" in incident.message  # the latest figure

    usage[0] = 0.85  # under the line, but degraded is not healthy again
    clock.now += 30
    await monitor.evaluate()
    usage[0] = 0.40
    for _ in range(3):  # healthy for 0, 30 and 59 s: not yet
        clock.now += 29.5 if _ == 2 else 30
        await monitor.evaluate()
        await resolver.drain()
    assert pipeline.store.get(incident.id).status == "open"

    clock.now += 1
    await monitor.evaluate()
    await resolver.drain()
    resolved = pipeline.store.get(incident.id)
    assert resolved.status == "resolved"
    last = pipeline.store.timeline(incident.id)[-1]
    assert last.actor == "health"
    assert "memory check has been healthy for 60 s" in last.message


async def test_a_check_that_raises_is_an_incident_of_its_own(pipeline: Pipeline) -> None:
    flaky = Flaky()
    monitor = HealthMonitor([flaky], pipeline.tracer)
    for message in ("disk 1 unreadable", "disk 2 unreadable"):
        flaky.error = OSError(message)
        report = await monitor.evaluate()
        assert report.checks["flaky"].status is Health.UNHEALTHY
    (incident,) = pipeline.incidents()
    assert incident.span_name == "health.flaky"
    assert incident.exception_type == HealthCheckFailed.__name__
    assert incident.message == "the flaky check raised OSError"
    assert incident.count == 2


def test_the_health_endpoint_server_span_is_never_an_incident(pipeline: Pipeline) -> None:
    for route, kind in (
        ("/api/emergency/health", SpanKind.SERVER),
        ("/api/emergency/health", SpanKind.CLIENT),  # a call to another replica's health
        ("/chat", SpanKind.SERVER),
    ):
        with pipeline.tracer.start_as_current_span(
            f"GET {route}", kind=kind, attributes={"http.route": route}
        ) as span:
            # A type per span so that each would be an incident of its own.
            span.set_status(Status(StatusCode.ERROR, f"{kind.name}{len(route)}Error: failed"))
    names = sorted(i.span_name for i in pipeline.incidents())
    assert names == ["GET /api/emergency/health", "GET /chat"]
    (client,) = [i for i in pipeline.incidents() if i.span_name.endswith("health")]
    assert client.count == 1


async def test_a_store_a_rollback_paused_is_no_incident(pipeline: Pipeline, tmp_path: Path) -> None:
    stores = Stores.in_directory(tmp_path / "data")
    await stores.open()
    monitor = HealthMonitor([StoresCheck(stores.by_component())], pipeline.tracer)
    try:
        with stores.paused(["budgets"], "a rollback is replacing this store"):
            report = await monitor.evaluate()
        stores_check = report.checks["stores"]
        # Before: unhealthy, an incident "1 of 4 state stores not writable", state degraded.
        assert stores_check.status is Health.DEGRADED
        assert stores_check.reason == "paused for a rollback: budgets"
        assert pipeline.incidents() == []
        assert (await monitor.evaluate()).checks["stores"].status is Health.HEALTHY
    finally:
        await stores.close()
