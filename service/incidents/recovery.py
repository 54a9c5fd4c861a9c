"""What an isolation by an alert, and its resolution, do to the incident it landed on.

An isolation that took mitigates the incident, as the responder's own does. When the alert
resolves, the condition behind it has cleared, so the incident is mitigated, on its timeline,
with the alert's fingerprint. An ``isolate`` alert released the agent's breaker to half-open:
its incident is resolved once a trial call succeeds and the breaker closes (at once when the
breaker is already closed). An alert with another action that opened its own incident has
nothing left to test, so that incident is resolved with the alert.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from service.incidents.alert_payload import Alert
from service.incidents.model import IllegalTransition, Incident, IncidentNotFound
from service.incidents.store import IncidentStore
from service.resilience.breaker import CircuitBreaker
from service.resilience.breaker_events import BreakerEvent, BreakerEventKind
from service.tasks import spawn

log = logging.getLogger("ers.alerts")

ACTOR = "alertmanager"
# What a resolution that leaves its incident to a trial says last (the ledger's outcome).
MITIGATED = "incident mitigated"


class IncidentMeters(Protocol):
    """The incident pipeline's metrics (``IncidentService``): what alerts open and recover
    counts there as what failures open and what the responder or an operator recovers."""

    def opened(self, incident: Incident) -> None: ...

    def observe_recovery(self, incident: Incident) -> None: ...


class IncidentRecovery:
    """Mitigates and resolves the incidents of resolved alerts; keeps at most one watch per
    breaker (a new firing of the agent's alert replaces it)."""

    def __init__(self, incidents: IncidentStore, meters: IncidentMeters) -> None:
        self.incidents = incidents
        self.meters = meters
        self._watches: dict[str, Callable[[], None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def mitigate(self, incident_id: str, alert: Alert) -> str:
        """Blocking: call off the event loop."""
        note = f"alert {alert.name} resolved (fingerprint {alert.fingerprint})"
        try:
            incident = self.incidents.mitigate(incident_id, ACTOR, note)
        except IllegalTransition as exc:
            # Mitigated by its firing's isolation already: so it stays, for a trial.
            return MITIGATED if exc.status == "mitigated" else f"incident left {exc.status}"
        self.meters.observe_recovery(incident)
        return MITIGATED

    def isolated(self, incident_id: str, alert: Alert) -> None:
        """The firing's isolation took: mitigated, as the responder's own isolation makes it
        (an alert's left its incident open, where the responder's read mitigated). Blocking:
        call off the event loop."""
        note = f"agent isolated by alert {alert.name} (fingerprint {alert.fingerprint}); "
        note += "fallbacks answer"
        try:
            incident = self.incidents.mitigate(incident_id, ACTOR, note)
        except (IllegalTransition, IncidentNotFound):
            return  # mitigated already, resolved meanwhile, or no incident (alert:<fp>)
        except Exception as exc:  # the isolation took: its outcome stays a success
            log.warning("could not mark %s mitigated after its isolation: %s", incident_id, exc)
            return
        self.meters.observe_recovery(incident)

    def resolve(self, incident_id: str, actor: str, note: str) -> str:
        """Blocking: call off the event loop."""
        try:
            incident = self.incidents.resolve(incident_id, actor, note)
        except IllegalTransition as exc:
            if exc.status == "resolved":  # by an operator, or by its quiet period, before
                return "incident resolved already"
            return f"incident not resolved: {exc}"
        except IncidentNotFound as exc:
            return f"incident not resolved: {exc}"
        self.meters.observe_recovery(incident)
        return "incident resolved"

    def forget(self, agent: str) -> None:
        """A new firing starts a new episode: the previous watch has nothing left to say."""
        unsubscribe = self._watches.pop(agent, None)
        if unsubscribe is not None:
            unsubscribe()

    def watch_trial(self, breaker: CircuitBreaker, incident_id: str, alert: Alert) -> None:
        """Resolve ``incident_id`` when ``breaker`` next closes; note a failed trial."""
        self.forget(breaker.name)
        loop = asyncio.get_running_loop()

        def on_transition(event: BreakerEvent) -> None:
            # Closed by a trial here, or by one on another replica of the fleet; a trial
            # that fails sends the breaker from half-open back to open.
            closed = event.to_state.value == "closed"
            failed = (event.from_state.value, event.to_state.value) == ("half_open", "open")
            if not closed and not failed:
                return
            if closed:
                self.forget(breaker.name)
            if closed and event.from_state.value == "half_open":
                how = "the half-open trial succeeded and its breaker closed"
            else:
                how = f"its breaker closed ({event.reason}, by {event.source or 'the breaker'})"
            # Breakers publish on the thread that called them: hand over to the loop.
            loop.call_soon_threadsafe(self._spawn, closed, how, breaker.name, incident_id, alert)

        self._watches[breaker.name] = breaker.subscribe(
            on_transition, [BreakerEventKind.STATE_TRANSITION]
        )

    def _spawn(self, closed: bool, how: str, agent: str, incident_id: str, alert: Alert) -> None:
        spawn(self._tasks, self._after_trial(closed, how, agent, incident_id, alert))

    async def _after_trial(
        self, closed: bool, how: str, agent: str, incident_id: str, alert: Alert
    ) -> None:
        try:
            if closed:
                note = (
                    f"{agent}: {how} after alert {alert.name} resolved"
                    f" (fingerprint {alert.fingerprint})"
                )
                await asyncio.to_thread(self.resolve, incident_id, f"breaker:{agent}", note)
            else:
                message = (
                    f"the half-open trial of {agent} failed; its breaker is open again and"
                    " the incident stays until a trial succeeds"
                )
                await asyncio.to_thread(
                    self.incidents.add_timeline, incident_id, "note", message, f"breaker:{agent}"
                )
        except Exception:  # a timeline write must never take the service down
            log.exception("the trial outcome of %s could not be recorded", agent)

    async def drain(self) -> None:
        await asyncio.sleep(0)  # let trial outcomes handed over by breakers start
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
