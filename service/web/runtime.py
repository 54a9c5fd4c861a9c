"""Everything the lifespan builds, in one place the dependencies reach: each part typed,
all given at once when the service is ready."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from service.backups.rollbacks import Rollbacks
from service.backups.service import BackupService
from service.chat.minimal_mode import MinimalMode
from service.chat.service import ChatService
from service.chat.team import Team
from service.health.checks import MemoryCheck
from service.health.monitor import HealthMonitor
from service.incidents.alert_webhook import AlertHandler
from service.incidents.audit import AuditLog
from service.incidents.service import IncidentService
from service.incidents.store import IncidentStore
from service.resilience.faults import FaultInjector
from service.resilience.state_keeper import StateKeeper
from service.resilience.system_state import SystemStateMachine
from service.stores import Stores
from service.web.kept_traces import KeptTraces


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
    minimal_mode: MinimalMode
    started_at: float = field(default_factory=time.time)

    @property
    def incidents(self) -> IncidentStore:
        return self.incident_service.store
