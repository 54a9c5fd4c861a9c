"""At start: the trials that resolved alerts left their incidents to, watched again.

A resolved ``isolate`` alert whose agent still failed its probe leaves the incident
mitigated, and a watch on the released breaker resolves it when a trial succeeds. Both the
watch and the half-open breaker live in the process: after a restart (which keeps no
released isolation) the breaker is closed, no trial ever comes, and the incident would stay
mitigated, a critical one keeping health at 503 and ``CriticalIncidentActive`` firing, until
its quiet period. So each such incident is handled as a resolution that finds its breaker
closed: the agent is asked once, the incident resolved when it answers, else watched until
its breaker, opened by the failures, closes again.
"""

from __future__ import annotations

import asyncio
import logging

from service.chat.team import Team
from service.errors import UnknownAgent
from service.incidents.alert_payload import Alert
from service.incidents.ledger import AlertLedger
from service.incidents.model import IncidentNotFound
from service.incidents.recovery import ACTOR, MITIGATED, IncidentRecovery
from service.incidents.store import IncidentStore

log = logging.getLogger("ers.alerts")


async def rewatch_trials(
    ledger: AlertLedger, incidents: IncidentStore, recovery: IncidentRecovery, team: Team
) -> int:
    """Ask again the agents whose incidents a resolution left mitigated for a trial; returns
    how many incidents were still waiting. Raises LedgerUnavailable."""
    waiting = 0
    for delivered, incident_id, at in await asyncio.to_thread(ledger.left_to_trials, MITIGATED):
        alert = Alert.model_validate_json(delivered)
        try:
            incident = await asyncio.to_thread(incidents.get, incident_id)
            guard = team.get(alert.target or "ers")
        except (IncidentNotFound, UnknownAgent):
            continue
        # Reopened since (a trial resolved it, the failures came back), it is mitigated by
        # someone else now, for reasons of their own: not this resolution's to end.
        if incident.status != "mitigated" or incident.opened_at > at:
            continue
        waiting += 1
        note = (
            f"alert {alert.name} resolved (fingerprint {alert.fingerprint}); ERS restarted"
            f" before a trial of {guard.name} decided"
        )
        try:
            if guard.breaker.state.value == "closed":
                probe = await guard.probe()
                if probe.error is None:
                    note = f"{note}; its health probe passed"
                    await asyncio.to_thread(recovery.resolve, incident.id, ACTOR, note)
                    continue
                note = f"{note}; its health probe failed ({probe.error})"
            # Resolved when the breaker, opened by the failures, closes again.
            recovery.watch_trial(guard.breaker, incident.id, alert)
            await asyncio.to_thread(incidents.add_timeline, incident.id, "note", note, ACTOR, {})
        except Exception:  # one incident's trouble must not keep the others waiting
            log.exception(
                "the trial of %s for %s could not be watched again", guard.name, incident.id
            )
    return waiting
