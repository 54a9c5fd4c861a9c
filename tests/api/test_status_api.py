"""Status, health, metrics summary and the system test, against real conditions."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.cli.status import _health_row
from service.health.checks import MemoryReading
from service.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """States driven by hand: the responder would also force breakers open on incidents."""
    return settings.model_copy(update={"auto_response_enabled": False})


async def test_status_in_the_seed_shape(client: httpx.AsyncClient) -> None:
    await client.get("/api/emergency/health")
    body = (await client.get("/api/emergency/status")).json()
    assert body["systemState"] == "normal"
    assert body["activeIncidents"] == 0
    assert body["circuitBreakers"] == {
        "total": 4,
        "open": 0,
        "closed": 4,
        "halfOpen": 0,
        "disabled": 0,
        "coolingDown": 0,
    }
    assert set(body["backups"]) == {"available", "lastBackup", "totalSize"}
    assert body["health"]["overall"] in ("healthy", "degraded")
    assert body["health"]["memoryUsage"].endswith("%")
    assert body["health"]["uptime"].endswith(("second", "seconds"))
    assert body["health"]["uptimeSeconds"] >= 0


async def test_forced_breakers_move_the_system_state(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    runtime = app.state.runtime
    runtime.state.recovery_clean_s = 0
    team = runtime.team
    team.get("budget").breaker.force_open("test", "operator")
    assert (await client.get("/api/emergency/status")).json()["systemState"] == "degraded"
    chat = await client.post("/chat", json={"message": "plan my meals"})
    assert chat.json()["systemState"] == "degraded"
    for name in ("nutrition", "workout"):
        team.get(name).breaker.force_open("test", "operator")
    assert (await client.get("/api/emergency/status")).json()["systemState"] == "emergency"
    for name in ("nutrition", "workout", "budget"):
        team.get(name).breaker.reset(force=True)
    assert runtime.state.state.value == "recovery"
    runtime.state.evaluate()
    assert (await client.get("/api/emergency/status")).json()["systemState"] == "normal"
    transitions = [(t.from_state.value, t.to_state.value) for t in runtime.state.history]
    assert transitions == [
        ("normal", "degraded"),
        ("degraded", "emergency"),
        ("emergency", "degraded"),  # two of four isolated is no longer "most"
        ("degraded", "recovery"),
        ("recovery", "normal"),
    ]
    metrics = (await client.get("/metrics")).text
    assert 'ers_system_state{state="normal"} 1.0' in metrics


async def test_the_health_report_follows_a_breaker_between_intervals(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """The full checks run every 30 s; the breakers may open in between, and status said
    "health: healthy" beside "degraded (breaker open: budget)" until the next interval."""
    runtime = app.state.runtime
    budget = runtime.team.get("budget").breaker
    before = await runtime.health.evaluate()
    assert before.checks["breakers"].status.value == "healthy"

    # The breaker's transition alone brings the report, and its metric, along.
    budget.force_open("bad answers", "operator")
    await asyncio.sleep(0.05)
    assert runtime.health.last.checks["breakers"].reason == "not closed: budget"
    metrics = (await client.get("/metrics")).text
    assert 'ers_health_check_status{check="breakers",status="degraded"} 1.0' in metrics

    status = (await client.get("/api/emergency/status")).json()
    assert status["systemState"] == "degraded"
    assert status["health"]["overall"] == "degraded"
    cached = (await client.get("/api/emergency/health", params={"refresh": "false"})).json()
    assert cached["overall"] == "degraded"
    # The slow checks are not run again for it: their results are the interval's.
    assert cached["checks"]["disk"]["checkedAt"] == before.checks["disk"].at
    # And the status says when they ran: its "healthy" may be that old for the stores.
    assert runtime.health.last.full_at == before.full_at
    assert status["health"]["fullCheckSecondsAgo"] >= 0
    assert _health_row({"overall": "healthy", "fullCheckSecondsAgo": 14.4}) == (
        "healthy (full check 14 s ago)"
    )

    budget.reset(force=True)
    await asyncio.sleep(0.05)
    assert runtime.health.last.checks["breakers"].status.value == "healthy"
    assert (await client.get("/api/emergency/status")).json()["health"]["overall"] == (
        before.overall.value
    )


@pytest.mark.parametrize(
    "ratio,status,code", [(0.5, "healthy", 200), (0.85, "degraded", 200), (0.95, "unhealthy", 503)]
)
async def test_memory_check_statuses_and_codes(
    client: httpx.AsyncClient, app: FastAPI, ratio: float, status: str, code: int
) -> None:
    exporter = InMemorySpanExporter()
    app.state.telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    limit = 1_000_000_000
    app.state.runtime.memory_check.reader = lambda: MemoryReading(int(limit * ratio), limit, "test")
    reply = await client.get("/api/emergency/health")
    assert reply.status_code == code
    memory = reply.json()["checks"]["memory"]
    assert memory["status"] == status
    assert memory["figures"]["usage"] == ratio
    error_spans = [s for s in exporter.get_finished_spans() if s.name == "health.memory"]
    if status == "unhealthy":
        (span,) = error_spans
        assert span.status.status_code.name == "ERROR"
        event = span.events[0]
        assert event.attributes["exception.type"].endswith("MemoryPressure")
        assert "Memory usage exceeded 90%" in event.attributes["exception.message"]
        assert "MemoryError" in span.attributes["ers.exception.bases"]
    else:
        assert error_spans == []


async def test_a_read_only_store_makes_health_unhealthy(
    client: httpx.AsyncClient, app: FastAPI, immutable: list[Path]
) -> None:
    store = app.state.runtime.stores.budgets.db
    # The main file and its write-ahead log; the shared-memory index must stay writable.
    targets = [store.path, store.path.with_name(store.path.name + "-wal")]
    done = subprocess.run(["chattr", "+i", *map(str, targets)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this filesystem cannot make files immutable: {done.stderr.strip()}")
    immutable.extend(targets)
    reply = await client.get("/api/emergency/health")
    assert reply.status_code == 503
    stores = reply.json()["checks"]["stores"]
    assert stores["status"] == "unhealthy"
    assert stores["figures"]["budgets"] != "writable"
    assert stores["figures"]["profiles"] == "writable"
    assert reply.json()["systemState"] == "degraded"  # a failing subsystem
    subprocess.run(["chattr", "-i", *map(str, targets)], check=True)
    immutable.clear()
    assert (await client.get("/api/emergency/health")).status_code == 200


async def test_metrics_summary_per_agent(client: httpx.AsyncClient, app: FastAPI) -> None:
    for _ in range(3):
        await client.post("/chat", json={"message": "plan my meals"})
    app.state.runtime.faults.inject("workout", "agent", count=1)
    await client.post("/chat", json={"message": "make me a workout plan"})
    body = (await client.get("/api/emergency/metrics?timeRange=1")).json()
    assert body["agents"]["nutrition"]["requests"] == 3
    assert body["agents"]["workout"]["errors"] == 1
    assert body["agents"]["workout"]["fallbacks"] == 1
    assert body["overall"]["requests"] == 8
    assert body["agents"]["router"]["p99Ms"] >= body["agents"]["router"]["p50Ms"]
    for bad in ("0", "169", "abc"):
        assert (await client.get(f"/api/emergency/metrics?timeRange={bad}")).status_code == 422


async def test_system_test_passes_then_names_the_broken_agent(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    healthy = (await client.post("/api/emergency/test-system")).json()
    assert healthy["passed"] is True, healthy
    names = {step["step"] for step in healthy["steps"]}
    assert {"agent:router", "agent:budget", "store:conversations"} <= names
    app.state.runtime.faults.inject("budget", "database")
    broken = (await client.post("/api/emergency/test-system")).json()
    assert broken["passed"] is False
    assert broken["failedSteps"] == ["agent:budget"]
    step = next(s for s in broken["steps"] if s["step"] == "agent:budget")
    assert "Database connection timeout" in step["detail"]
    # Canary calls never touch the breakers.
    assert app.state.runtime.team.get("budget").breaker.state.value == "closed"


async def test_system_test_tells_an_agents_timeout_from_its_own(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """Before: every TimeoutError was the step's 30 s, for a fault that timed out at once or
    an agent past its own timeout_s."""
    app.state.runtime.faults.inject("nutrition", "timeout")
    broken = (await client.post("/api/emergency/test-system")).json()
    step = next(s for s in broken["steps"] if s["step"] == "agent:nutrition")
    assert step["passed"] is False
    assert "within 30 s" not in step["detail"]
    assert step["detail"].startswith("TimeoutError"), step["detail"]
