"""At start: the trials that resolved alerts left their incidents to, watched again.

A resolved ``isolate`` alert whose agent still failed its probe leaves the incident
mitigated, and a watch on the released breaker resolves it when a trial succeeds. Both the
watch and the half-open breaker live in the process: after a restart (which keeps no
released isolation) the breaker is closed, no trial ever comes, and the incident would stay
mitigated, a critical one keeping health at 503 and ``CriticalIncidentActive`` firing, until
its quiet period. So each such incident is handled as a resolution that finds its breaker
closed: the agent is asked once, the incident resolved when it answers, else watched until
its breaker, opened by the failures, closes again. An incident whose agent an isolate alert
isolated again since is left to that alert (its firing ended the watch). With the database
away, the pass is tried again at each round of the replays until it goes through.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from service.chat.team import Team
from service.errors import UnknownAgent
from service.incidents.alert_payload import Alert
from service.incidents.ledger import AlertLedger, LedgerUnavailable
from service.incidents.model import IncidentNotFound, IncidentStoreUnavailable
from service.incidents.recovery import ACTOR, MITIGATED, IncidentRecovery
from service.incidents.store import IncidentStore
from service.resilience.guard import GuardedAgent

log = logging.getLogger("ers.alerts")


@dataclass(eq=False)
class Rewatch:
    """The trials resolved alerts left incidents to, asked again once after a start: tried at
    each round of the replays until one pass has gone through every incident (a database
    away at start must not leave them mitigated until their quiet period)."""

    ledger: AlertLedger
    incidents: IncidentStore
    recovery: IncidentRecovery
    team: Team
    finished: bool = False
    done: set[str] = field(default_factory=set)  # handled by a pass that failed further on
    # Resolutions from this start on are the running handler's, its watches armed.
    started: float = field(default_factory=time.time)

    async def until_done(self) -> None:
        """One pass, unless one has gone through already; never raises."""
        if self.finished:
            return
        try:
            await self.trials()
            self.finished = True
        except (LedgerUnavailable, IncidentStoreUnavailable) as exc:
            log.warning("the trials resolved alerts left incidents to not asked yet: %s", exc)
        except Exception:  # not the database: the next round would fail the same way
            self.finished = True
            log.exception("the trials resolved alerts left incidents to not asked again")

    async def trials(self) -> int:
        """Ask again the agents whose incidents a resolution left mitigated for a trial;
        returns how many incidents were still waiting. Raises LedgerUnavailable and
        IncidentStoreUnavailable."""
        waiting = 0
        left = await asyncio.to_thread(self.ledger.left_to_trials, MITIGATED)
        # Oldest first: each watch on a breaker replaces the one before, and the newest
        # resolution held it before the stop.
        for delivered, incident_id, at in reversed(left):
            if incident_id in self.done or at >= self.started:
                continue
            try:
                alert = Alert.model_validate_json(delivered)
                incident = await asyncio.to_thread(self.incidents.get, incident_id)
                guard = self.team.get(alert.target or "ers")
            except (IncidentNotFound, UnknownAgent):
                continue
            except ValueError:  # a row that no longer reads as an alert: the others still wait
                log.warning(
                    "a resolution left %s to a trial in a row that is no alert", incident_id
                )
                continue
            # Reopened since (a trial resolved it, the failures came back), it is mitigated
            # by someone else now, for reasons of their own: not this resolution's to end.
            if incident.status != "mitigated" or incident.opened_at > at:
                continue
            # Isolated again since: that firing ended the watch, and its own resolution
            # decides.
            if await self._isolated_since(alert.target, at):
                continue
            waiting += 1
            await self._ask(guard, incident.id, alert)
            self.done.add(incident_id)
        return waiting

    async def _isolated_since(self, target: str | None, since: float) -> bool:
        for delivered in await asyncio.to_thread(self.ledger.firings_since, since):
            try:
                alert = Alert.model_validate_json(delivered)
            except ValueError:  # a row that no longer reads as an alert isolates nothing here
                continue
            if alert.action == "isolate" and alert.target == target:
                return True
        return False

    async def _ask(self, guard: GuardedAgent, incident_id: str, alert: Alert) -> None:
        note = (
            f"alert {alert.name} resolved (fingerprint {alert.fingerprint}); ERS restarted"
            f" before a trial of {guard.name} decided"
        )
        try:
            if guard.breaker.state.value == "closed":
                probe = await guard.probe()
                if probe.error is None:
                    note = f"{note}; its health probe passed"
                    await asyncio.to_thread(self.recovery.resolve, incident_id, ACTOR, note)
                    return
                note = f"{note}; its health probe failed ({probe.error})"
            # Resolved when the breaker, opened by the failures, closes again.
            self.recovery.watch_trial(guard.breaker, incident_id, alert)
            await asyncio.to_thread(
                self.incidents.add_timeline, incident_id, "note", note, ACTOR, {}
            )
        except IncidentStoreUnavailable:
            raise  # the pass is tried again at the next round
        except Exception:  # one incident's trouble must not keep the others waiting
            log.exception(
                "the trial of %s for %s could not be watched again", guard.name, incident_id
            )
