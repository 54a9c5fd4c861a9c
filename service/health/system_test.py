"""The seed's "comprehensive system test": a synthetic pass over every part of the system.

Each step runs on its own with a timeout and reports pass or fail, its duration and, on
failure, what went wrong. Canary calls go through every agent's guard marked synthetic:
they bypass the breakers, so a test run never opens or closes one.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from service.agents.base import AgentRequest
from service.chat.team import Team
from service.stores import Stores
from telemetry.exception_events import described

STEP_TIMEOUT_S = 30.0
SYSTEM_TEST_COMPONENT = "system-test"

Step = tuple[str, Callable[[], Awaitable[str]]]


@dataclass(frozen=True)
class StepResult:
    name: str
    passed: bool
    duration_ms: float
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.name,
            "passed": self.passed,
            "durationMs": round(self.duration_ms, 2),
            "detail": self.detail,
        }


def agent_steps(team: Team) -> list[Step]:
    def canary(name: str) -> Callable[[], Awaitable[str]]:
        async def run() -> str:
            request = AgentRequest("system test canary", "ers-system-test", synthetic=True)
            reply = await team.get(name).handle(request)
            return f"answered ({len(reply.content)} characters)"

        return run

    return [(f"agent:{name}", canary(name)) for name in team.guards]


def store_steps(stores: Stores) -> list[Step]:
    def probe(component: str) -> Callable[[], Awaitable[str]]:
        async def run() -> str:
            await stores.by_component()[component].probe_writable()
            return "write, read and delete succeeded"

        return run

    return [(f"store:{name}", probe(name)) for name in stores.by_component()]


async def run_steps(steps: list[Step]) -> dict[str, Any]:
    started = time.perf_counter()
    results = []
    for name, step in steps:
        step_started = time.perf_counter()
        limit = asyncio.timeout(STEP_TIMEOUT_S)
        try:
            async with limit:
                detail = await step()
            passed = True
        except TimeoutError as exc:
            # The step's own limit, or what it called timing out (an agent's timeout_s)
            cut = limit.expired()
            detail = f"did not finish within {STEP_TIMEOUT_S:g} s" if cut else described(exc)
            passed = False
        except Exception as exc:
            detail, passed = described(exc), False
        results.append(
            StepResult(name, passed, (time.perf_counter() - step_started) * 1000, detail)
        )
    failed = [r.name for r in results if not r.passed]
    return {
        "passed": not failed,
        "failedSteps": failed,
        "durationMs": round((time.perf_counter() - started) * 1000, 2),
        "steps": [r.as_dict() for r in results],
    }


class SystemTestProbe(RuntimeError):
    """A failure made on purpose by the system test to follow it through the pipeline."""


def incident_step(incidents: Any, tracer: trace.Tracer) -> list[Step]:
    """A synthetic error span must come out as an incident, which is then closed."""

    async def run() -> str:
        marker = secrets.token_hex(6)
        with tracer.start_as_current_span(
            "ers.system_test",
            attributes={"ers.synthetic": True, "ers.component": SYSTEM_TEST_COMPONENT},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            if not span.is_recording():
                raise RuntimeError("tracing is off, so failures cannot reach the pipeline")
            span.record_exception(SystemTestProbe(f"system test probe {marker}"))
            span.set_status(Status(StatusCode.ERROR, "system test probe"))
        await incidents.drain()
        incident = await asyncio.to_thread(incidents.store.find_active, SYSTEM_TEST_COMPONENT)
        if incident is None or marker not in incident.message:
            raise RuntimeError("the synthetic error span did not come out as an incident")
        await asyncio.to_thread(
            incidents.store.resolve, incident.id, "test-system", "synthetic check passed"
        )
        return f"{incident.id} opened from the span and closed"

    return [("incident-pipeline", run)]


def repository_step(backups: Any) -> list[Step]:
    async def run() -> str:
        snapshots = await backups.require().refresh()
        return f"repository answered with {len(snapshots)} snapshots"

    return [("restic-repository", run)]


def system_steps(
    team: Team, stores: Stores, backups: Any, incidents: Any, tracer: trace.Tracer
) -> list[Step]:
    """Every step: each agent, each store, the repository (with backups on), the pipeline."""
    steps = agent_steps(team) + store_steps(stores)
    if backups is not None:
        steps += repository_step(backups)
    return steps + incident_step(incidents, tracer)
