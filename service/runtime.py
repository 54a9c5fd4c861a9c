"""Everything the lifespan builds, in one place the dependencies reach: each part typed,
all given at once when the service is ready."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

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
from service.stores import Stores
from service.team import Team
from service.wiring import KeptTraces
from telemetry.incident_lifecycle import IncidentStoreBase


@dataclass
class Readiness:
    """Whether the service takes traffic (``/readyz``), and why not."""

    ready: bool = False
    reason: str | None = "starting"

    def set(self, ready: bool, reason: str | None) -> None:
        self.ready, self.reason = ready, reason


@dataclass(frozen=True)
class Runtime:
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
