"""Everything the lifespan builds, in one place the dependencies reach."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
from service.settings import Settings
from service.stores import Stores
from service.system_test import Step
from service.team import Team
from telemetry.incident_lifecycle import IncidentStoreBase
from telemetry.providers import Telemetry


@dataclass
class Runtime:
    settings: Settings
    telemetry: Telemetry
    stores: Stores
    team: Team
    chat: ChatService
    faults: FaultInjector | None
    health: HealthMonitor
    state: SystemStateMachine
    memory_check: MemoryCheck
    system_test_steps: Callable[[], list[Step]]
    state_keeper: StateKeeper | None = None
    active_incidents: Callable[[], dict[str, int]] = lambda: {}
    incidents_by_severity: Callable[[float], dict[str, int]] = lambda hours: {}
    backups_summary: Callable[[], dict[str, Any]] = lambda: {
        "available": 0,
        "lastBackup": None,
        "totalSize": "0 B",
    }
    backups: BackupService | None = None
    audit: AuditLog | None = None
    incident_service: IncidentService | None = None
    incidents: IncidentStoreBase | None = None
    alerts: AlertHandler | None = None
    traces: Any = None
    started_at: float = field(default_factory=time.time)
    ready: bool = False
    not_ready_reason: str | None = "starting"

    def set_ready(self, ready: bool, reason: str | None) -> None:
        self.ready, self.not_ready_reason = ready, reason

    async def snapshot_before_incident(
        self, incident_id: str | None, component: str | None = None
    ) -> str:
        """The newest snapshot (of ``component``, when given) taken before the incident
        first appeared."""
        from backup import SnapshotNotFound
        from telemetry.incident_model import IncidentNotFound

        if self.incidents is None or self.backups is None or incident_id is None:
            raise SnapshotNotFound("incidents or backups are not available")
        try:
            incident = await asyncio.to_thread(self.incidents.get, incident_id)
        except IncidentNotFound as exc:
            raise SnapshotNotFound(str(exc)) from None
        moment = datetime.fromtimestamp(incident.first_seen, UTC)
        snapshot_id = self.backups.newest_before(moment, component)
        if snapshot_id is None:
            raise SnapshotNotFound(
                f"no snapshot was taken before {incident_id} first appeared ({moment:%c} UTC)"
            )
        return snapshot_id

    def record_rollback(self, request: Any, result: Any, error: str | None) -> None:
        """Blocking (the incident store and the audit file): call off the event loop."""
        if self.incidents is not None and request.beforeIncident:
            words = f"failed: {error}" if error else f"rolled back to {result.snapshot_id}"
            with contextlib.suppress(LookupError):
                self.incidents.add_timeline(
                    request.beforeIncident,
                    "note",
                    f"rollback {words}",
                    "admin",
                    {"reason": request.reason},
                )
        if self.audit is None:
            return
        self.audit.record(
            "admin",
            "rollback",
            {
                "backupId": getattr(result, "snapshot_id", None) or request.backupId,
                "beforeIncident": request.beforeIncident,
                "reason": request.reason,
                "components": request.components,
                "safetyBackupId": getattr(result, "safety_snapshot_id", None),
                "error": error,
            },
        )
