"""Everything the lifespan builds, in one place the dependencies reach."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.alerting.handler import AlertHandler
from service.audit import AuditLog
from service.backups import BackupService
from service.chat import ChatService
from service.faults import FaultInjector
from service.health.checks import MemoryCheck
from service.health.monitor import HealthMonitor
from service.health.system_state import SystemStateMachine
from service.incidents import IncidentService
from service.resilience.state_keeper import StateKeeper
from service.rollbacks import Rollbacks
from service.settings import Settings
from service.stores import Stores
from service.system_test import Step, system_steps
from service.team import Team
from service.wiring import KeptTraces
from telemetry.incident_lifecycle import IncidentStoreBase
from telemetry.providers import Telemetry


@dataclass
class Readiness:
    """Whether the service takes traffic (``/readyz``), and why not."""

    ready: bool = False
    reason: str | None = "starting"

    def set(self, ready: bool, reason: str | None) -> None:
        self.ready, self.reason = ready, reason


@dataclass
class Runtime:
    settings: Settings
    telemetry: Telemetry
    readiness: Readiness
    stores: Stores
    team: Team
    faults: FaultInjector | None
    audit: AuditLog
    incident_service: IncidentService
    traces: KeptTraces
    state: SystemStateMachine
    state_keeper: StateKeeper
    backups: BackupService | None
    rollbacks: Rollbacks | None
    alerts: AlertHandler
    health: HealthMonitor
    memory_check: MemoryCheck
    chat: ChatService
    started_at: float = field(default_factory=time.time)

    @property
    def incidents(self) -> IncidentStoreBase:
        return self.incident_service.store

    @property
    def ready(self) -> bool:
        return self.readiness.ready

    @property
    def not_ready_reason(self) -> str | None:
        return self.readiness.reason

    @property
    def active_incidents(self) -> Callable[[], dict[str, int]]:
        return self.incident_service.active_counts

    def incidents_by_severity(self, hours: float) -> dict[str, int]:
        return self.incidents.counts_by_severity(time.time() - hours * 3600)

    def backups_summary(self) -> dict[str, Any]:
        if self.backups is None:
            return {"available": 0, "lastBackup": None, "totalSize": "0 B"}
        return self.backups.summary()

    def system_test_steps(self) -> list[Step]:
        return system_steps(
            self.team, self.stores, self.backups, self.incident_service, self.telemetry.tracer
        )

    async def snapshot_before_incident(
        self, incident_id: str | None, component: str | None = None
    ) -> str:
        from backup import SnapshotNotFound

        if self.rollbacks is None:
            raise SnapshotNotFound("incidents or backups are not available")
        return await self.rollbacks.snapshot_before(incident_id, component)

    def record_rollback(self, request: Any, result: Any, error: str | None) -> None:
        if self.rollbacks is not None:
            self.rollbacks.record(request, result, error)
