"""What ERS does with an alert from Alertmanager.

Each alert is recorded in the ledger first (a duplicate delivery stops there), then, in the
background: it lands on an incident, its receipt goes on the timeline, and a firing alert runs
its action — ``isolate`` force-opens the agent's breaker (source ``alertmanager``) and mitigates
the incident, ``backup`` takes an emergency backup, ``rollback`` rolls back only when automatic
rollback is on, ``cleanup`` trims caches. A resolved alert never starts an action: it recovers
the incident its firing landed on (``recovery``). A resolved ``isolate`` (no other isolate alert
still firing for the agent) releases the breaker to half-open and asks the agent at once, as an
operator's reset does (a chat's trial could wait for ever: health answers 503 while a critical
incident is open, and a balancer that heeds it sends no chat); it closes the breaker and
resolves the incident when the agent answers, else leaves it mitigated for chats' trials to
decide. A breaker found closed (a reset, a restart) is asked the same before it is resolved. A
resolution a stopped process had taken and not finished is handled again at the next start, or
on PostgreSQL by another replica (see the ledger)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from service.chat.holds import with_ended_holds
from service.errors import UnknownAgent
from service.incidents.alert_landing import AlertLanding
from service.incidents.alert_payload import (
    ACTIONS,
    Alert,
    WebhookPayload,
    alert_fingerprint,
    rollback_refusal,
)
from service.incidents.ledger import (
    COOLDOWN_OUTCOME,
    ISOLATED,
    NOT_KEPT_OUTCOME,
    AlertLedger,
    LedgerUnavailable,
    finish_outcome,
    firing_handled,
    isolated_nothing,
)
from service.incidents.model import Incident, IncidentNotFound
from service.incidents.recovery import ACTOR, IncidentMeters, IncidentRecovery
from service.incidents.responder import COOLDOWN_SKIP, Responder, ResponseContext
from service.incidents.rewatch import Rewatch
from service.incidents.store import IncidentStore
from service.tasks import cancel_and_wait, spawn

log = logging.getLogger("ers.alerts")


# A rollback's outcome while it runs, and for good when its process dies meanwhile.
UNFINISHED_ROLLBACK = (
    "rollback: started, and ERS stopped before it finished; not run again by a later delivery"
    " (the state may be rolled back already): see the audit trail and the incident's timeline"
)


@dataclass(eq=False)
class AlertHandler:
    ledger: AlertLedger
    incidents: IncidentStore
    responder: Responder
    meters: IncidentMeters  # alert-opened and recovered incidents, in the pipeline's metrics
    isolate_ttl_s: float = 900.0
    recovery: IncidentRecovery = field(init=False)
    landing: AlertLanding = field(init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    # Actions waiting out the responder's cooldown for a firing that asked for them.
    _timers: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    # One alert is handled at a time, in the order its deliveries arrived: a resolution
    # waits for the action of its firing instead of racing it.
    _locks: dict[str, tuple[asyncio.Lock, list[int]]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.recovery = IncidentRecovery(self.incidents, self.meters)
        agents = self.responder.team.guards.keys
        self.landing = AlertLanding(self.ledger, self.incidents, self.meters, agents)

    async def receive(self, payload: WebhookPayload) -> dict[str, Any]:
        """Record every alert (raises LedgerUnavailable) and act on the new ones later."""
        new = duplicates = 0
        for alert in payload.alerts:
            starts_at = alert.startsAt.isoformat()
            # Kept: a lost resolution is handled again from it, a firing holds its incident
            # (an isolate alert's, its agent) against other alerts' resolutions.
            delivered = alert.model_dump_json()
            if await asyncio.to_thread(
                self.ledger.record,
                alert.fingerprint,
                starts_at,
                alert.status,
                alert.name,
                delivered,
            ):
                new += 1
                self._start(alert)
            else:
                duplicates += 1
        return {"received": len(payload.alerts), "new": new, "duplicates": duplicates}

    def _start(self, alert: Alert) -> None:
        spawn(self._tasks, self._process(alert))

    async def replay_lost(self) -> int:
        """Handle again the resolutions a stopped process had taken and not finished
        (Alertmanager does not send a delivered resolution again). Returns how many."""
        taken = await asyncio.to_thread(self.ledger.take_lost_resolutions)
        for delivered in taken:
            alert = Alert.model_validate_json(delivered)
            log.warning(
                "alert %s (fingerprint %s) resolved while ERS stopped before it finished"
                " acting on it; acting on it now",
                alert.name,
                alert.fingerprint,
            )
            self._start(alert)
        return len(taken)

    async def run_replays(self, every_s: float = 60.0) -> None:
        """Replay lost resolutions now (start-up) and every ``every_s`` (on PostgreSQL a
        replica may die with one it had taken), until cancelled."""
        rewatch = Rewatch(self.ledger, self.incidents, self.recovery, self.responder.team)
        while True:
            await rewatch.until_done()  # the trials' watches a stop dropped; never raises
            try:
                await self.replay_lost()
            except LedgerUnavailable as exc:
                log.warning("lost alert resolutions not looked for: %s", exc)
            except Exception:  # a row that no longer reads as an alert must not end them
                log.exception("lost alert resolutions not replayed")
            await asyncio.sleep(every_s)

    async def close(self) -> None:
        """At shutdown: no action waits out a cooldown any more (the alert's next delivery
        takes it again), and the alerts being acted on finish."""
        await cancel_and_wait(*self._timers)
        await self.drain()

    async def drain(self) -> None:
        """Wait for the alerts being acted on (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.recovery.drain()

    async def _process(self, alert: Alert) -> None:
        async with self._turn(alert.fingerprint):
            await self._handle(alert)

    @contextlib.asynccontextmanager
    async def _turn(self, fingerprint: str) -> AsyncIterator[None]:
        """One alert's deliveries (and its action after a cooldown) one at a time."""
        lock, users = self._locks.setdefault(fingerprint, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[fingerprint]

    async def _handle(self, alert: Alert) -> None:
        starts_at = alert.startsAt.isoformat()
        incident_id: str | None = None
        try:
            # What its firing did is known once it is done: unless it waits here, behind this.
            if alert.status == "resolved" and self._locks[alert.fingerprint][1][0] == 1:
                await firing_handled(self.ledger, alert.fingerprint, starts_at)
            stale = (
                await asyncio.to_thread(self.landing.stale, alert)
                if alert.status == "firing"
                else None
            )
            if stale is not None:
                outcome = f"stale: {stale}; nothing done"
            else:
                incident = await asyncio.to_thread(self.landing.land, alert)
                incident_id = incident.id if incident is not None else ""
                outcome = await self._act(alert, incident)
        except Exception as exc:  # an alert must never take the service down
            log.exception("alert %s could not be handled", alert.name)
            outcome = f"failed: {type(exc).__name__}: {exc}"
        await finish_outcome(
            self.ledger, alert.fingerprint, starts_at, alert.status, incident_id, outcome
        )

    async def _act(self, alert: Alert, incident: Incident | None) -> str:
        action = alert.action
        target = alert.acts_on
        incident_id = incident.id if incident is not None else ""
        if alert.status == "resolved":
            return await self._recover(alert, incident)
        context = ResponseContext(
            incident_id or f"alert:{alert.fingerprint}",
            protocol="ALERT",
            component=target,
            reason=f"alert {alert.describe()}",
            source=ACTOR,
            ttl_s=self.isolate_ttl_s,
            # A reopened incident is a new episode: what ran for the last one (an isolation
            # released since) holds nothing back, as for the responder.
            episode=incident.reopen_count if incident is not None else 0,
        )
        if action is None:
            return "recorded; the alert names no action"
        if action not in ACTIONS:
            # Alertmanager had its 200: only ERS's log tells the rule's author.
            log.warning(
                "alert %s names an unknown action %r (ERS knows %s): recorded on a low "
                "incident, nothing done; fix the rule's action label",
                alert.name,
                action,
                ", ".join(ACTIONS),
            )
            await asyncio.to_thread(
                self._note, incident_id, f"unknown action '{action}': recorded, nothing done"
            )
            return f"unknown action '{action}'"
        if action == "rollback" and (refused := rollback_refusal(target)):
            await asyncio.to_thread(self._note, incident_id, f"rollback refused: {refused}")
            return f"rollback refused: {refused}"
        if action == "isolate":
            self.recovery.forget(target)
        if (
            action == "rollback"
            and self.responder.auto_rollback
            and self.responder.rollback_allowed
        ):
            # Said before it runs, as its outcome until it has one: a rollback that a
            # ``kill -9`` cut off may have replaced the state already, so the ledger does not
            # hand it to the next delivery, which would roll back the writes made since.
            await asyncio.to_thread(
                self.ledger.finish,
                alert.fingerprint,
                alert.startsAt.isoformat(),
                alert.status,
                incident_id,
                UNFINISHED_ROLLBACK,
            )
        result = await self.responder.run_action(ACTIONS[action], context)
        if action == "isolate" and result.result == "success" and incident_id:
            await asyncio.to_thread(self.recovery.isolated, incident_id, alert)
        if result.detail != COOLDOWN_SKIP:
            kept = "" if result.kept else f", {NOT_KEPT_OUTCOME}"
            return f"{result.action}: {result.result}{kept}"
        # The responder keeps quiet about it; the alert's reader would see nothing done.
        note = (
            f"{result.action}: skipped — already tried for this incident within the last"
            f" {self.responder.cooldown_s:g} s; its result is above"
        )
        outcome = f"{result.action}: {result.result}"
        if action == "isolate":
            # An isolation released since (by an operator) while the alert still fires: it
            # asks for it again once the cooldown ends (and by its next delivery, which the
            # ledger takes again, after a restart). A backup or a rollback is not repeated
            # so: the one that ran covers the incident.
            left = self.responder.cooldown_left(ACTIONS[action], context)
            note += f". Run again in {left:.0f} s if the alert still fires"
            outcome = f"{result.action}: {COOLDOWN_OUTCOME}"
            spawn(self._timers, self._after_cooldown(alert, context, left))
        await asyncio.to_thread(self._note, incident_id, note)
        return outcome

    async def _after_cooldown(self, alert: Alert, context: ResponseContext, wait_s: float) -> None:
        await asyncio.sleep(wait_s + 0.5)
        starts_at, action = alert.startsAt.isoformat(), ACTIONS[alert.action or ""]
        async with self._turn(alert.fingerprint):
            try:
                if await asyncio.to_thread(self._still_firing, alert, context.incident_id):
                    result = await self.responder.run_action(action, context)
                    if alert.action == "isolate" and result.result == "success":
                        await asyncio.to_thread(self.recovery.isolated, context.incident_id, alert)
                    outcome = f"{result.action}: {result.result}, once the cooldown ended"
                    finish = (alert.fingerprint, starts_at, alert.status, context.incident_id)
                    # Skipped, perhaps as another replica's wait isolated: not over its success.
                    keep = ISOLATED if result.result == "skipped" else None
                    await finish_outcome(self.ledger, *finish, outcome, keep)
            except Exception:  # an alert must never take the service down
                log.exception("alert %s could not be acted on after the cooldown", alert.name)

    def _still_firing(self, alert: Alert, incident_id: str) -> bool:
        """The firing holds as a delivery now would (no resolution arrived first), its
        incident is still active, and no other delivery's wait here acted for it (a later
        one's skip overwrote the first's success: the resolution then released nothing)."""
        entry = self.ledger.entry(alert.fingerprint, alert.startsAt.isoformat(), alert.status)
        waiting = ((entry or {}).get("outcome") or "").endswith(COOLDOWN_OUTCOME)
        if not waiting or self.landing.stale(alert) is not None:
            return False
        try:
            return self.incidents.get(incident_id).active
        except IncidentNotFound:
            return False

    async def _recover(self, alert: Alert, incident: Incident | None) -> str:
        """The alert's condition has cleared: recover the incident its firing landed on."""
        if incident is None:
            return "resolved: its firing reached no incident here; nothing to recover"
        note = f"alert {alert.name} resolved (fingerprint {alert.fingerprint})"
        if alert.action != "isolate":
            # An incident alerts opened is resolved by the last alert on it to resolve.
            if held := await asyncio.to_thread(self.landing.held_open, incident):
                return f"resolved: {held}"
            return await asyncio.to_thread(self.recovery.resolve, incident.id, ACTOR, note)
        firing = await asyncio.to_thread(
            self.ledger.entry, alert.fingerprint, alert.startsAt.isoformat(), "firing"
        )
        own = incident.fingerprint == alert_fingerprint(alert, alert.target or "ers")
        # A forced open of alertmanager another alert holds, which still fires, is left to it,
        # with its incident (which it landed on too), no trial watched, nothing mitigated.
        nothing = isolated_nothing(firing)
        held = None if nothing else await asyncio.to_thread(self._held_for_another, alert)
        if nothing or held is not None:
            left = held or "its firing isolated nothing; the breaker is left as it is"
            await asyncio.to_thread(self._note, incident.id, f"{note}: {left}")
            if not own or held is not None:
                return f"{left}; the incident is left to what opened it"
            resolved = await asyncio.to_thread(self.recovery.resolve, incident.id, ACTOR, note)
            return f"{left}; {resolved}"
        released, breaker_state = self._release(alert, incident)
        if breaker_state in ("half_open", "closed"):
            released, breaker_state = await self._probe(alert, released, incident, breaker_state)
        await asyncio.to_thread(self._note, incident.id, released)
        # No breaker (the target is no agent here): no trial will ever come to resolve the
        # alert's own incident, which would stay mitigated, and active, until quiet.
        if breaker_state is None and not own:
            # Nothing was isolated for it: the incident is not this alert's to mitigate.
            return f"{released}; the incident is left to what opened it"
        if breaker_state == "closed" or (breaker_state is None and own):
            outcome = await asyncio.to_thread(self.recovery.resolve, incident.id, ACTOR, note)
        else:
            outcome = await asyncio.to_thread(self.recovery.mitigate, incident.id, alert)
        return f"{released}; {outcome}"

    def _held_for_another(self, alert: Alert) -> str | None:
        """Why the agent stays isolated when another isolate alert about it isolated it
        within the isolation time and still fires; None when none does."""
        since = time.time() - self.isolate_ttl_s
        for delivered in self.ledger.isolating(alert.fingerprint, since):
            other = Alert.model_validate_json(delivered)  # an isolate alert's firing
            if other.target == alert.target:
                return (
                    f"alert {other.name} (fingerprint {other.fingerprint}) isolated it too and"
                    " still fires; the breaker is left as it is"
                )
        return None

    def _release(self, alert: Alert, incident: Incident | None) -> tuple[str, str | None]:
        """Lift the forced open this alert made; watch the trial that follows. Returns what
        was done and the breaker's state after it (None when the target is no agent)."""
        agent = alert.target or "ers"
        try:
            guard = self.responder.team.get(agent)
        except UnknownAgent:
            return f"'{agent}' is not an agent", None
        breaker, forced = guard.breaker, guard.breaker.snapshot().get("forced")
        if forced and (source := forced.get("source")) != "alertmanager":
            message = f"the breaker is forced open by {source or 'another'}; left as it is"
        else:  # not forced open (released already, or before a kill cut this off): it says so
            message = breaker.release(source="alertmanager")
        state = breaker.state.value
        if incident is not None and state != "closed":
            # Armed before any await: a trial that closes the breaker cannot be missed.
            self.recovery.watch_trial(breaker, incident.id, alert)
        return message, state

    async def _probe(
        self, alert: Alert, released: str, incident: Incident, state: str
    ) -> tuple[str, str]:
        """Ask the agent now: released to half-open here, close its breaker when it answers;
        closed already (an operator's reset, a restart), it must answer all the same. What was
        done, and "closed" to resolve the incident with the alert, else "half_open"."""
        guard = self.responder.team.get(alert.target or "ers")
        probe = await guard.probe()
        if probe.error is not None:
            if state == "closed":  # resolved when the breaker, opened by failures, closes
                self.recovery.watch_trial(guard.breaker, incident.id, alert)
            return f"{released}; its health probe failed ({probe.error})", "half_open"
        if state == "closed":
            return f"{released}; its health probe passed", "closed"
        if guard.breaker.state.value != "half_open":
            # A chat's trial decided meanwhile: its watch resolves the incident, or notes it.
            return released, "half_open"
        self.recovery.forget(guard.name)  # resolved here, not by the trial's watch

        def close() -> str:
            guard.breaker.reset(probe=probe, source=ACTOR)
            return "its health probe passed and its breaker closed"

        # Its events end the cached answers and a rate-limit cooldown, as a reset's do.
        return f"{released}; {with_ended_holds(guard, close)}", "closed"

    def _note(self, incident_id: str, message: str) -> None:
        if incident_id:
            self.incidents.add_timeline(incident_id, "note", message, ACTOR, {})
