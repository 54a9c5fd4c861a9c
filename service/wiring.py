"""Small pieces the lifespan connects the parts with: views, predicates and loops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from typing import Any

from service.health.monitor import HealthReport
from service.health.system_state import StateTransition, SystemStateMachine
from service.incidents import IncidentService
from service.team import Team
from telemetry.span_record import SpanRecord
from telemetry.trace_keeper import TraceKeeper, span_tree

log = logging.getLogger("ers")


class KeptTraces:
    """The traces endpoint's view of the trace keeper: a span tree or None; and where the
    OTLP intake hands other services' spans to it. Both may read or write the keeper's file:
    call them off the event loop."""

    def __init__(self, keeper: TraceKeeper) -> None:
        self.keeper = keeper

    def keep_records(self, records: list[SpanRecord]) -> int:
        return self.keeper.keep_records(records)

    def tree(self, trace_id: str) -> dict[str, object] | None:
        records = self.keeper.get_trace(trace_id)
        if records is None:
            return None
        return {
            "traceId": trace_id,
            "spanCount": len(records),
            "errorSpans": sum(r.is_error for r in records),
            "spans": span_tree(records),
        }


def agent_is_healthy(team: Team, component: str) -> bool:
    """For auto-resolve: an agent is healthy again once its breaker is closed."""
    guard = team.guards.get(component)
    return guard is None or guard.breaker.state.value == "closed"


class StateNotes:
    """Notes each system state change on the timeline of the incident most likely behind
    it, one after another in the order they happened, on a thread of its own: a note is two
    round trips to the incident store, and the state machine runs on the event loop.

    ``close`` waits for the notes already taken; it must run before the store closes (a
    note written into a closing SQLite connection can crash the process)."""

    def __init__(self, incidents: IncidentService) -> None:
        self._incidents = incidents
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ers-state-notes")

    def __call__(self, transition: StateTransition) -> None:
        try:
            self._pool.submit(_note_state_change, self._incidents, transition)
        except RuntimeError:  # shutting down: the store is about to close
            log.info("the state change %s was not noted: shutting down", transition.to_state)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _note_state_change(incidents: IncidentService, transition: StateTransition) -> None:
    try:
        _write_state_change(incidents, transition)
    except Exception as exc:  # the store may be down; the state has changed all the same
        log.warning("the state change %s could not be noted: %s", transition.to_state, exc)


def _write_state_change(incidents: IncidentService, transition: StateTransition) -> None:
    rank = {"critical": 0, "high": 1, "medium": 2, "low": 3}
    active, _ = incidents.store.list(status="active", limit=50)
    if not active:
        return
    cause = min(active, key=lambda i: (rank.get(i.severity, 4), -i.last_seen))
    incidents.store.add_timeline(
        cause.id,
        "state_changed",
        f"system state {transition.from_state} -> {transition.to_state}: {transition.reason}",
        "ers",
        {"from": transition.from_state.value, "to": transition.to_state.value},
    )


def breaker_states(team: Team) -> dict[str, str]:
    return {guard.name: guard.breaker.state.value for guard in team.guards.values()}


SUBSYSTEM_CHECKS = frozenset({"stores", "disk", "event_loop", "backups", "repository"})


class FailingSubsystems:
    """The subsystems the last health report found unhealthy, for the system state: kept
    from the health monitor's reports, so the state machine is built before the monitor
    (whose checks include the backups, which put back the state the machine keeps)."""

    def __init__(self) -> None:
        self._names: list[str] = []

    def on_report(self, report: HealthReport) -> None:
        self._names = [name for name in report.unhealthy() if name in SUBSYSTEM_CHECKS]

    def names(self) -> list[str]:
        return self._names


async def tick_state(state: SystemStateMachine, interval_s: float = 1.0) -> None:
    """Recovery ends by the passing of time, so the state is also looked at every second."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            state.evaluate()
        except Exception:  # one bad reading must not stop the state from moving on
            log.exception("evaluating the system state failed")


def run_in_background(
    stack: AsyncExitStack, coroutine: Coroutine[Any, Any, None], name: str
) -> None:
    """Run ``coroutine`` as a task until the stack unwinds to here."""
    task = asyncio.get_running_loop().create_task(coroutine, name=name)

    async def stop() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    stack.push_async_callback(stop)
