"""What degraded chat replies say of incidents, read without a query on the request path:
the incident an agent's failure grouped into (from the pipeline's events), and the actions
taken for it, the responder's and the alerts' alike, as they ran in this process or, for an
isolation kept across a restart, as its incident's timeline says."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from service.agents.base import AgentReply
from service.incidents.merge import GroupOutcome
from service.incidents.model import IncidentNotFound
from service.incidents.store import IncidentStore
from service.resilience.breaker import CircuitBreaker
from service.resilience.breaker_config import BreakerState
from service.resilience.breaker_events import BreakerEvent
from telemetry.fingerprint import normalise_message

log = logging.getLogger("ers.incidents")
# Incidents whose actions are remembered for the replies; the oldest go first.
REMEMBERED = 1000
# Actions in force in the process that ran them alone: after a restart no reply names them.
ENDED_BY_A_RESTART = frozenset({"serve_cached"})


@functools.lru_cache(maxsize=4096)
def _cause_key(cause: str) -> str:
    """A failure's words as its incident is found by; normalising costs some 35 us, and a
    failing agent repeats the same words on every call of an error storm."""
    return normalise_message(cause)


class ReplyIncidents:
    def __init__(self, store: IncidentStore) -> None:
        self.store = store
        self._latest: dict[str, str] = {}
        # (agent, the failure's words, normalised) -> the incident it grouped into, last seen.
        self._latest_by_cause: dict[tuple[str, str], str] = {}
        self._actions: dict[str, dict[str, str]] = {}  # incident -> action -> result
        # Agent -> the incident its breaker is forced open for (here, or by the fleet).
        self._forced_for: dict[str, str] = {}

    def heard(self, event: GroupOutcome) -> None:
        """An incident event, on the event loop: the component's latest incident."""
        incident = event.incident
        self._latest[incident.component] = incident.id
        if len(self._latest_by_cause) > 10_000:
            self._latest_by_cause.clear()
        cause = _cause_key(event.record.status_message)
        self._latest_by_cause[(incident.component, cause)] = incident.id

    def acted(self, incident_id: str, action: str, result: str, component: str = "") -> None:
        """An action ran for ``incident_id`` (the responder's or an alert's). An isolation
        makes it the incident the calls it turns away name (an alert's incident comes from
        no span, so from no event). An alert's action for no incident is not kept."""
        if not incident_id.startswith("INC_"):
            return
        if action == "isolate" and result == "success" and component:
            self._latest[component] = incident_id
        self._actions.setdefault(incident_id, {})[action] = result
        if len(self._actions) > REMEMBERED:
            self._actions.pop(next(iter(self._actions)))

    def enrich(self, reply: AgentReply) -> AgentReply:
        """Name the agent's incident and what was done about it in a degraded reply: for a
        failed call, the incident of its error, found by the words of its cause, which are
        its span's status (none yet when this is the cause's first failure: the incident is
        written off the request path); for a call turned away (breaker, cooldown), the
        agent's latest incident; for one its full bulkhead turned away, none. A reply that
        names its incident already (minimal mode's) keeps it. The actions are those taken
        since the agent's breaker last closed: a reset undid the ones before."""
        if reply.incident is not None:
            incident_id: str | None = reply.incident
        elif reply.data.get("outcome") in ("failure", "timeout", "refused"):
            cause = _cause_key(str(reply.data.get("cause", "")))
            incident_id = self._latest_by_cause.get((reply.agent, cause))
        elif reply.data.get("bulkhead"):  # busy, not failing: no incident is its cause
            incident_id = None
        else:
            incident_id = self._forced_for.get(reply.agent) or self._latest.get(reply.agent)
        # Keeps what the guard said (an agent that answered instead, and the chain tried).
        recovery: dict[str, Any] = {**(reply.recovery or {}), "fallback": reply.fallback}
        if incident_id is not None:
            done = self._actions.get(incident_id, {})
            recovery["actions"] = [{"action": a, "result": r} for a, r in done.items()]
        return replace(reply, incident=incident_id, recovery=recovery)

    async def name_kept_isolations(self, breakers: Iterable[CircuitBreaker]) -> list[str]:
        """At start, after the isolations kept from before are put back: a call turned away
        by one names the incident it was forced open for, while that incident is unresolved,
        and the actions its timeline says were taken in its current episode, but those a
        restart ended or that kept nothing (the agents' latest incidents are remembered in
        memory only). The agents named."""
        named = []
        for breaker in breakers:
            forcing = breaker.forcing
            if forcing is None or forcing.incident is None:
                continue
            try:
                incident = await asyncio.to_thread(self.store.get, forcing.incident)
                timeline = await asyncio.to_thread(self.store.timeline, incident.id)
            except IncidentNotFound:
                self._forced_for.pop(breaker.name, None)
                continue
            except Exception as exc:  # the store is out: the replies name none, as before
                self._forced_for.pop(breaker.name, None)
                log.warning(
                    "the incident %s that %s is isolated for could not be read: %s",
                    forcing.incident,
                    breaker.name,
                    exc,
                )
                continue
            if incident.status == "resolved":  # no reply names a resolved incident
                self._forced_for.pop(breaker.name, None)
            elif breaker.name not in self._latest:
                self._latest[breaker.name] = incident.id
                named.append(breaker.name)
                episode_of: dict[str, int] = {}  # an action's, as its start said
                for entry in timeline:
                    data, action = entry.data, entry.data.get("action")
                    if entry.kind == "action_started" and action is not None:
                        episode_of[action] = data.get("episode", 0)
                    if entry.kind != "action_finished" or action in ENDED_BY_A_RESTART:
                        continue
                    if episode_of.get(action, 0) == incident.reopen_count and data.get("kept", 1):
                        self.acted(incident.id, action, data["result"])
        return named

    def on_breaker_transition(
        self, event: BreakerEvent, breaker: CircuitBreaker | None = None
    ) -> None:
        """An agent's breaker closed: its incidents are no longer what a call turned away
        from it is about. Until a new failure's incident is written, such a reply names none
        rather than one that may be resolved by now. Forced open for an incident (here, or
        on another replica of the fleet, whose override names it): the calls it turns away
        name that incident, and the isolation done for it; a renewal for another incident
        (two failures of one agent at once) names the new one, as the breaker does."""
        if event.to_state is BreakerState.FORCED_OPEN:
            forcing = breaker.forcing if breaker is not None else None
            if forcing is not None and forcing.incident is not None:
                self._forced_for[event.breaker] = forcing.incident
                self._actions.setdefault(forcing.incident, {}).setdefault("isolate", "success")
            return
        forced_for = self._forced_for.pop(event.breaker, None)
        if event.to_state is not BreakerState.CLOSED:
            return
        # What was done for its incidents is undone (released, reset): a new failure in the
        # same incident is a new episode, whose replies name only what is done for it. (The
        # isolation another replica did is known here by its forced open alone.)
        ended = {forced_for, self._latest.pop(event.breaker, None)}
        for key in [key for key in self._latest_by_cause if key[0] == event.breaker]:
            ended.add(self._latest_by_cause.pop(key))
        for incident_id in ended:
            if incident_id is not None:
                self._actions.pop(incident_id, None)
