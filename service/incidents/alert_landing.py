"""Where an alert from Alertmanager lands, and whether a firing still holds.

A firing is stale, recorded and left alone, when its own resolution arrived first (a retry,
the other Alertmanager of a pair), or when it is about the active incidents (label ``about:
incidents``) and none of its severity or worse is active. Such an alert lands on the most
severe of those: an incident of its own (an active critical incident, the alert's very
condition) would keep it firing, and a lesser one is no reason to back up or roll back. An
``isolate`` alert lands on its agent's active incident, whatever its type (one naming no
agent on one of its own); a ``backup``, ``rollback`` or ``cleanup`` alert on its target's of
its kind, else its target's of any kind, else the most severe active one; any other alert on
one of its own. A resolution lands on the incident its firing
landed on, as the ledger kept it. Each landing goes on the incident's timeline, and so, at a
start, does the action of a firing that a kill cut off (``note_lost``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from service.incidents.alert_payload import (
    ACTION_TYPES,
    ACTIONS,
    ALERT_RULE,
    Alert,
    alert_failure,
    incident_severity,
)
from service.incidents.ledger import AlertLedger
from service.incidents.model import Incident, IncidentNotFound
from service.incidents.recovery import IncidentMeters
from service.incidents.store import IncidentStore

log = logging.getLogger("ers.alerts")


@dataclass(eq=False)
class AlertLanding:
    """Blocking (the incident store and the ledger): call off the event loop."""

    ledger: AlertLedger
    incidents: IncidentStore
    meters: IncidentMeters
    # The team's agents: an isolate alert naming none of them isolates nothing, and its
    # incident is low whatever its severity label (a mistyped label would otherwise raise
    # a critical incident, an emergency backup, and with it a rollback of the whole state).
    agents: Callable[[], Collection[str]] = tuple

    def stale(self, alert: Alert) -> str | None:
        """Why a firing alert no longer holds by the time it is handled, else None."""
        if self.ledger.entry(alert.fingerprint, alert.startsAt.isoformat(), "resolved"):
            # Delivered late: acting now would make what no resolution will come to end.
            return "its resolution arrived first"
        if alert.labels.get("about") == "incidents" and not self._most_severe_active(alert):
            # Resolved between Prometheus's evaluation and this delivery (see the module).
            floor = incident_severity(alert)
            return f"it is about the active incidents ({floor} or worse), and none is active"
        return None

    def land(self, alert: Alert) -> Incident | None:
        component = alert.target or "ers"
        kind = alert.labels.get("type") or ACTION_TYPES.get(alert.action or "", "alert")
        if alert.status == "resolved":
            # Only what its firing did is the resolution's to undo: one whose firing never
            # reached ERS (down meanwhile) must not resolve another cause's incident.
            incident = self._fired_on(alert)
        else:
            incident = self._existing(alert, component, kind)
            if incident is None:
                incident = self._open(alert, component, kind)
        if incident is None:
            return None
        # Kept before the action runs, for a resolution to undo even after a ``kill -9``.
        self.ledger.land(alert.fingerprint, alert.startsAt.isoformat(), alert.status, incident.id)
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
        return incident

    def held_open(self, incident: Incident) -> str | None:
        """Why an alert's resolution (but an ``isolate`` alert's) leaves the incident its
        firing landed on open, else None: failures opened it, or another alert whose firing
        landed on it still fires; or it is resolved already (an operator's word)."""
        if not incident.active:
            return f"the incident is {incident.status} already; nothing to recover"
        if incident.rule != ALERT_RULE:
            return "the incident is left to the failures that opened it"
        other = still_firing_on(self.ledger, incident)
        if other is not None:
            return (
                f"alert {other.name} (fingerprint {other.fingerprint}) landed on the"
                " incident too and still fires; the incident is left open"
            )
        return None

    def _fired_on(self, alert: Alert) -> Incident | None:
        """The incident the firing of this alert landed on, as the ledger recorded it."""
        entry = self.ledger.entry(alert.fingerprint, alert.startsAt.isoformat(), "firing")
        if not entry or not entry["incidentId"]:
            return None
        try:
            return self.incidents.get(entry["incidentId"])
        except IncidentNotFound:
            return None

    def _existing(self, alert: Alert, component: str, kind: str) -> Incident | None:
        """The active incident a firing lands on (see the module); None for an alert that
        opens, or joins by its own fingerprint, an incident of its own."""
        if alert.labels.get("about") == "incidents":
            return self._most_severe_active(alert)
        if "type" in alert.labels:  # the incident's type, named by the alert
            return self.incidents.find_active(component, kind)
        if alert.action == "isolate":
            # One naming no agent isolates nothing: another alert's incident is not its own.
            return self.incidents.find_active(component) if alert.target else None
        if alert.action in ("backup", "rollback", "cleanup"):
            return (
                self.incidents.find_active(component, kind)
                or (self.incidents.find_active(component) if alert.target else None)
                or self._most_severe_active()
            )
        return None

    def _most_severe_active(self, alert: Alert | None = None) -> Incident | None:
        """The most severe active incident (the newest seen of those); of ``alert``'s
        severity or worse when named."""
        at_least = incident_severity(alert) if alert is not None else "low"
        return self.incidents.most_severe_active(at_least)

    def _open(self, alert: Alert, component: str, kind: str) -> Incident:
        severity = None
        if alert.action == "isolate" and component not in (agents := self.agents()):
            severity = "low"
            log.warning(
                "alert %s would isolate '%s', which is not an agent (%s): its incident is %s,"
                " whatever its severity label; fix the rule's agent label",
                alert.name,
                component,
                ", ".join(sorted(agents)),
                severity,
            )
        elif alert.action is not None and alert.action not in ACTIONS:
            severity = "low"  # a mistyped action label: no emergency of its own (the log says)
        failure = alert_failure(alert, component, kind, severity)
        incident, outcome = self.incidents.record_error(*failure)
        if outcome != "updated":  # counted as the incident pipeline counts its own
            self.meters.opened(incident)
        return incident


def still_firing_on(ledger: AlertLedger, incident: Incident) -> Alert | None:
    """Blocking. An alert whose firing landed on ``incident``, one that alerts opened, and
    whose resolution has not arrived, else None. An alert about the active incidents holds
    none: it fires because they are."""
    if incident.rule != ALERT_RULE:
        return None
    for delivered in ledger.firing_on(incident.id):
        alert = Alert.model_validate_json(delivered)
        if alert.labels.get("about") != "incidents":
            return alert
    return None


def note_lost(store: IncidentStore, lost: list[dict[str, Any]]) -> None:
    """Say at start-up what ``mark_lost`` found: in the log, and on the timeline of each
    incident a firing landed on, whose ``action_started`` had no end."""
    log.warning(
        "%d alert(s) were being acted on when ERS stopped; a resolution among them is acted"
        " on again now, a firing on its next delivery",
        len(lost),
    )
    for row in lost:
        if row["status"] != "firing" or not row["incident_id"]:
            continue
        note = (
            f"{row['alertname']}'s action cut off: ERS stopped before it finished; the "
            "alert's next delivery takes it again"
        )
        try:
            store.add_timeline(row["incident_id"], "note", note, "ers", {"lost": True})
        except LookupError:
            pass  # the incident is gone: nothing to note it on
        except Exception:  # the note is a courtesy: the start goes on without it
            log.exception("could not note the cut-off action on %s", row["incident_id"])
