"""The health monitor with every check, started: what it reports moves the system state and
opens (and resolves) the incidents of failing checks."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

from service.backups.service import BackupService
from service.chat.team import Team
from service.errors import StoreUnavailable
from service.health.backup_checks import BackupAgeCheck, RepositoryCheck, RestoreDrillCheck
from service.health.checks import (
    BreakersCheck,
    DiskCheck,
    EventLoopCheck,
    HealthCheck,
    IncidentsCheck,
    LoopLagMonitor,
    MemoryCheck,
)
from service.health.incidents import HealthIncidents
from service.health.metrics import register_health_metrics
from service.health.monitor import HealthMonitor, HealthReport
from service.health.stores_check import StoresCheck
from service.incidents.model import IncidentStoreUnavailable
from service.incidents.service import IncidentService
from service.incidents.store import IncidentStore
from service.resilience.breaker_events import BreakerEventKind
from service.resilience.system_state import SystemStateMachine
from service.settings import Settings
from service.stores import Stores
from service.tasks import run_in_background
from telemetry.providers import Telemetry


def start_health(
    stack: AsyncExitStack,
    settings: Settings,
    telemetry: Telemetry,
    stores: Stores,
    team: Team,
    incidents: IncidentService,
    backups: BackupService | None,
    state: SystemStateMachine,
    failing: FailingSubsystems,
) -> tuple[HealthMonitor, MemoryCheck]:
    """Checks run every interval and on demand, until the stack unwinds to here."""
    lag_monitor = LoopLagMonitor()
    memory_check = MemoryCheck()
    checks: list[HealthCheck] = [
        memory_check,
        EventLoopCheck(lag_monitor),
        StoresCheck({**stores.by_component(), "incidents": IncidentStoreProbe(incidents.store)}),
        DiskCheck(settings.data_dir),
        BreakersCheck(lambda: team.breaker_states(advance=True), team.cooling_down),
        IncidentsCheck(incidents.active_counts, incidents.counts_unread),
    ]
    if backups is not None:
        checks += [RepositoryCheck(backups), BackupAgeCheck(backups), RestoreDrillCheck(backups)]
    health = HealthMonitor(checks, telemetry.tracer, interval_s=settings.health_check_interval_s)
    for breaker in team.breakers():  # the report follows a breaker that opens or closes
        breaker.subscribe(lambda event: health.refresh_soon(), [BreakerEventKind.STATE_TRANSITION])
    health.subscribe(failing.on_report)
    health.subscribe(lambda report: state.evaluate())
    health_incidents = HealthIncidents(incidents.store, settings.health_incident_resolve_after_s)
    health.subscribe(health_incidents.on_report)
    stack.push_async_callback(health_incidents.drain)
    register_health_metrics(telemetry.meter, state, health, memory_check, time.time())
    lag_monitor.start()
    stack.push_async_callback(lag_monitor.stop)
    health.start()
    stack.push_async_callback(health.stop)
    if backups is not None:
        # The first report is made while the repository is still being opened ("connecting"):
        # report again as soon as that ends, not an interval later.
        run_in_background(stack, _evaluate_after(backups.first_attempt_done, health), "health")
    return health, memory_check


async def _evaluate_after(event: asyncio.Event, health: HealthMonitor) -> None:
    await event.wait()
    health.evaluate_soon()


class IncidentStoreProbe:
    """The incidents' file or schema (the audit trail and the alert ledger too), probed
    beside the components' stores: a failure it cannot record opens no incident, so the
    responder never acts on it, and health must say so."""

    def __init__(self, store: IncidentStore) -> None:
        self._store = store

    async def probe_writable(self) -> None:
        try:
            await asyncio.to_thread(self._store.probe_writable)
        except IncidentStoreUnavailable as exc:
            raise StoreUnavailable("incidents", exc.reason) from None


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
