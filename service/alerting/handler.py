"""What ERS does with an alert from Alertmanager.

Each alert is recorded in the ledger first (a duplicate delivery stops there), then, in the
background: it lands on an incident (the open one of the same component and type, else a new
one), its receipt goes on the timeline, and a firing alert runs its action —
``isolate`` force-opens the agent's breaker with source ``alertmanager``, ``backup`` takes an
emergency backup, ``rollback`` rolls back only when automatic rollback is on, ``cleanup``
trims caches. A resolved ``isolate`` releases the breaker to half-open, so recovery is
tested; a resolved alert never starts an action.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from service.alerting.ledger import AlertLedger
from service.alerting.ledger_pg import PgAlertLedger
from service.alerting.payload import Alert, WebhookPayload
from service.errors import UnknownAgent
from service.responder import Responder, ResponseContext
from telemetry.classifier import Classification
from telemetry.incident_lifecycle import IncidentStoreBase
from telemetry.span_record import SpanRecord

log = logging.getLogger("ers.alerts")

ACTIONS = {
    "isolate": "isolate",
    "backup": "emergency_backup",
    "rollback": "rollback",
    "cleanup": "trim_caches",
}
ACTION_TYPES = {"isolate": "agent", "backup": "system", "rollback": "system", "cleanup": "resource"}
SEVERITIES = {"critical": "critical", "page": "critical", "warning": "medium", "ticket": "medium"}


class AlertHandler:
    def __init__(
        self,
        ledger: AlertLedger | PgAlertLedger,
        incidents: IncidentStoreBase,
        responder: Responder,
        isolate_ttl_s: float = 900.0,
        on_alert: Callable[[str, str], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.incidents = incidents
        self.responder = responder
        self.isolate_ttl_s = isolate_ttl_s
        self._on_alert = on_alert
        self._tasks: set[asyncio.Task[None]] = set()

    def receive(self, payload: WebhookPayload) -> dict[str, Any]:
        """Record every alert (raises LedgerUnavailable) and act on the new ones later."""
        new = duplicates = 0
        for alert in payload.alerts:
            starts_at = alert.startsAt.isoformat()
            if self.ledger.record(alert.fingerprint, starts_at, alert.status, alert.name):
                new += 1
                task = asyncio.get_running_loop().create_task(self._process(alert))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                duplicates += 1
        return {"received": len(payload.alerts), "new": new, "duplicates": duplicates}

    async def drain(self) -> None:
        """Wait for the alerts being acted on (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _process(self, alert: Alert) -> None:
        starts_at = alert.startsAt.isoformat()
        try:
            incident_id = await asyncio.to_thread(self._land, alert)
            outcome = await self._act(alert, incident_id)
        except Exception as exc:  # an alert must never take the service down
            log.exception("alert %s could not be handled", alert.name)
            incident_id, outcome = None, f"failed: {type(exc).__name__}: {exc}"
        self.ledger.finish(alert.fingerprint, starts_at, alert.status, incident_id, outcome)
        if self._on_alert is not None:
            self._on_alert(alert.action or "none", alert.status)

    def _land(self, alert: Alert) -> str:
        component = alert.target or "ers"
        kind = alert.labels.get("type") or ACTION_TYPES.get(alert.action or "", "alert")
        incident = self.incidents.find_active(component, kind)
        if incident is None and alert.status == "firing":
            incident = self._open(alert, component, kind)
        elif incident is None:
            incident = self.incidents.find_active(component)
        if incident is None:
            return ""
        words = "firing" if alert.status == "firing" else "resolved"
        self.incidents.add_timeline(
            incident.id,
            "alert_received",
            f"alert {alert.name} {words}: {alert.describe()}",
            "alertmanager",
            {
                "alertname": alert.name,
                "status": alert.status,
                "fingerprint": alert.fingerprint,
                "action": alert.action,
                "labels": alert.labels,
            },
        )
        return incident.id

    def _open(self, alert: Alert, component: str, kind: str):  # noqa: ANN202
        now_ns = time.time_ns()
        record = SpanRecord(
            name=f"alert.{alert.name}",
            trace_id="",
            span_id=secrets.token_hex(8),
            parent_span_id=None,
            start_ns=now_ns,
            end_ns=now_ns,
            status_code="ERROR",
            status_message=alert.describe(),
            attributes={"ers.component": component, "ers.alert": alert.name},
            service_name="alertmanager",
            exception_type=f"Alert{alert.name}",
            exception_message=alert.describe(),
        )
        classification = Classification(
            severity=SEVERITIES.get(alert.labels.get("severity", ""), "medium"),
            type=kind,
            impact="service_degraded",
            recoverable=True,
            protocol=None,
            rule="alertmanager",
            component=component,
            fingerprint=f"alert:{alert.name}:{component}",
        )
        incident, _ = self.incidents.record_error(record, classification)
        return incident

    async def _act(self, alert: Alert, incident_id: str) -> str:
        action = alert.action
        target = alert.target or "ers"
        context = ResponseContext(
            incident_id or f"alert:{alert.fingerprint}",
            protocol="ALERT",
            component=target,
            reason=f"alert {alert.describe()}",
            source="alertmanager",
            ttl_s=self.isolate_ttl_s,
        )
        if alert.status == "resolved":
            if action == "isolate":
                return await self._release(target, incident_id)
            return "resolved: nothing to do"
        if action is None:
            return "recorded; the alert names no action"
        if action not in ACTIONS:
            self._note(incident_id, f"unknown action '{action}': recorded, nothing done")
            return f"unknown action '{action}'"
        result = await self.responder.run_action(ACTIONS[action], context)
        return f"{result.action}: {result.result}"

    async def _release(self, agent: str, incident_id: str) -> str:
        try:
            guard = self.responder.team.get(agent)
        except UnknownAgent:
            return f"'{agent}' is not an agent"
        forced = guard.breaker.snapshot().get("forced")
        if not forced or forced.get("source") != "alertmanager":
            return "the breaker is not held by alertmanager; left as it is"
        message = guard.breaker.release(source="alertmanager")
        self._note(incident_id, message)
        return message

    def _note(self, incident_id: str, message: str) -> None:
        if incident_id:
            self.incidents.add_timeline(incident_id, "note", message, "alertmanager", {})
