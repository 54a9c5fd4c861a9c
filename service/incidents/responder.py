"""The responder: runs the actions of an emergency protocol, once per incident and action
within a cooldown, and writes what happened on the incident's timeline.

Protocols and their actions (the seed's four scenarios):
- AGENT_FAILURE: isolate the agent (force its breaker open with a TTL), restart it;
- SERVICE_DEGRADATION: isolate, serve cached answers for the TTL, without calling the agent;
- CRITICAL_SYSTEM_FAILURE: emergency backup, minimal response mode (for the TTL, chat answers
  with short guidance and calls no agent), rollback (only when automatic rollback is on;
  otherwise "approval needed");
- RESOURCE_EXHAUSTION: trim the cache of last good answers.
Agent actions on a component that is no agent, and actions on ERS's own chat and state for another
service's incident (/v1/traces), are skipped with the reason on the timeline. Fleet-wide actions
(isolate, emergency backup, rollback) are claimed in the shared database first: one replica runs
each per incident. A failed action is recorded as failed; it never takes the service down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Protocol

from backup import BackupError
from service.chat.minimal_mode import MinimalMode
from service.chat.team import Team
from service.errors import ErsError, UnknownAgent
from service.incidents.action_claims import (
    FLEET_WIDE_ACTIONS,
    ActionClaims,
    claim,
    claim_name,
    give_back,
)
from service.incidents.audit import Trail, audited_rollback
from service.incidents.recovery import ACTOR as ALERTMANAGER
from service.resilience.breaker_config import BreakerState

log = logging.getLogger("ers.responder")

PROTOCOL_ACTIONS: dict[str, tuple[str, ...]] = {
    "AGENT_FAILURE": ("isolate", "restart_agent"),
    "SERVICE_DEGRADATION": ("isolate", "serve_cached"),
    "CRITICAL_SYSTEM_FAILURE": ("emergency_backup", "minimal_response_mode", "rollback"),
    "RESOURCE_EXHAUSTION": ("trim_caches",),
}
# Why an action is skipped without a word on the timeline: it ran for the incident already.
COOLDOWN_SKIP = "ran within the cooldown"
ACTION_LIMIT_S, ROLLBACK_HOLD_S = 120.0, 3600.0  # an action's time; a rollback's claim
# Actions on one agent: skipped for a component that is not an agent of the team. Actions
# on ERS's own chat and state: skipped for another service's failure.
AGENT_ACTIONS = frozenset({"isolate", "release", "restart_agent", "serve_cached"})
OWN_ACTIONS = frozenset({"minimal_response_mode", "rollback"})
# Actions whose effect outlives the process (kept isolations and minimal mode, a rolled-back
# state): their cooldown holds across a restart. The others act on what a restart renews
# (agent instances, cached answers), or keep a cooldown of their own (emergency backups,
# which then name the backup that covers them), so they run again after one.
LASTING_ACTIONS = frozenset({"isolate", "minimal_response_mode", "rollback"})
# Actions that keep calls from the agent: not for one whose breaker an operator disabled.
WITHHOLDING_ACTIONS = frozenset({"isolate", "serve_cached"})


class Timeline(Protocol):
    def add_timeline(
        self, incident_id: str, kind: str, message: str, actor: str, data: dict[str, Any]
    ) -> None: ...


@dataclass(frozen=True)
class ActionResult:
    action: str
    result: str  # success | skipped | not_available | approval_needed | failed
    detail: str
    # False: in force in this process, but not saved to outlive it (a kill loses it), so it
    # holds nothing back: the next call for it (after a restart too) runs it again.
    kept: bool = True


@dataclass
class ResponseContext:
    incident_id: str
    protocol: str
    component: str
    reason: str
    source: str = "responder"
    ttl_s: float | None = None
    # How often the incident reopened: a reopened incident is a new episode, whose actions
    # run again even within the cooldown of the last episode's.
    episode: int = 0
    service: str | None = None  # another service, whose spans came to /v1/traces: no agent


ActionFn = Callable[[ResponseContext], Awaitable[ActionResult]]


@dataclass(eq=False)
class Responder:
    team: Team
    timeline: Timeline | None
    _: KW_ONLY
    isolate_ttl_s: float = 120.0
    cooldown_s: float = 300.0
    auto_rollback: bool = False
    # emergency_rollback_enabled: False forbids rollbacks at all, automatic ones included.
    rollback_allowed: bool = True
    clock: Callable[[], float] = time.monotonic
    on_action: Callable[[ResponseContext, ActionResult], None] | None = None
    minimal_mode: MinimalMode | None = None
    claims: ActionClaims | None = None
    replica: str = ""
    # None without backups. An emergency backup says if it took one (not within its cooldown).
    emergency_backup: Callable[[ResponseContext], Awaitable[tuple[bool, str]]] | None = None
    rollback: Callable[[ResponseContext, str], Awaitable[str]] | None = None  # and its run
    audit: Trail | None = None  # the audit trail, where every rollback is written
    # An incident's timeline as stored, and the wall clock it is written by: the cooldown
    # of an action started before a restart is read back from there.
    read_timeline: Callable[[str], list[Any]] | None = None
    wall_clock: Callable[[], float] = time.time
    # This process's memory share now, and the share above which trimming its caches is
    # worth it (an alert's cleanup reaches any replica, not only the one it is about).
    memory: Callable[[], tuple[float, float]] | None = None
    # Saves the kept isolations and minimal mode now: None once saved, else why not.
    keep: Callable[[], Awaitable[str | None]] | None = None
    _last_run: dict[tuple[str, str, int], float] = field(default_factory=dict, init=False)
    _running: set[tuple[str, str, int]] = field(default_factory=set, init=False)
    _actions: dict[str, ActionFn] = field(init=False)

    def __post_init__(self) -> None:
        # Each action is the method of its name: "isolate" is _isolate.
        named = {"release", *(a for actions in PROTOCOL_ACTIONS.values() for a in actions)}
        self._actions = {action: getattr(self, f"_{action}") for action in named}

    def actions_for(self, protocol: str | None) -> tuple[str, ...]:
        return PROTOCOL_ACTIONS.get(protocol or "", ())

    async def respond(self, context: ResponseContext) -> list[ActionResult]:
        """Run the protocol's actions in order."""
        return [await self.run_action(a, context) for a in self.actions_for(context.protocol)]

    def cooldown_left(self, action: str, context: ResponseContext) -> float:
        """Seconds until ``action`` may run again for ``context``'s incident (0: it may)."""
        last = self._last_run.get((context.incident_id, action, context.episode))
        return 0.0 if last is None else max(0.0, self.cooldown_s - (self.clock() - last))

    async def run_action(self, action: str, context: ResponseContext) -> ActionResult:
        key = (context.incident_id, action, context.episode)
        now = self.clock()
        last = self._last_run.get(key)
        if last is None and (age := await self._started_before(action, context)) is not None:
            last = self._last_run[key] = now - age
        if key in self._running or (last is not None and now - last < self.cooldown_s):
            return ActionResult(action, "skipped", COOLDOWN_SKIP)
        self._last_run[key] = now
        if len(self._last_run) > 10_000:
            self._forget_old(now)
        # Another service's incident is no case for acting on ERS's own (not "approval needed").
        foreign = action in OWN_ACTIONS and context.service
        result = None if foreign else self._cannot_run(action)
        if result is None:
            if (why_not := await self._why_not(action, context)) is not None:
                return await self._skip(action, context, why_not)
            self._running.add(key)
            try:
                result = await self._run(action, context)
            finally:  # a rollback may run past the cooldown: it holds it, and starts it again
                self._running.discard(key)
                self._last_run[key] = self.clock()
        else:  # nothing starts, nor holds off the next call (or replica): said as it is
            self._last_run.pop(key, None)
        if result.result == "failed" or not result.kept:  # the next call for it runs it
            self._last_run.pop(key, None)
            if action in FLEET_WIDE_ACTIONS and self.claims is not None:  # here or elsewhere
                name = claim_name(action, context.episode)
                await give_back(self.claims, self.replica, context.incident_id, name)
        finished = {"action": action, "result": result.result}
        if result.result == "skipped":  # it found nothing to do, and says why
            finished["reason"] = result.detail
        if not result.kept:
            finished["kept"] = False
        await self._note(
            context, "action_finished", f"{action}: {result.result} — {result.detail}", finished
        )
        if self.on_action is not None:
            self.on_action(context, result)
        return result

    async def _started_before(self, action: str, context: ResponseContext) -> float | None:
        """Seconds since this process, or the one before a restart, started ``action`` for
        the incident's episode, as its timeline says, whoever asked for it (the responder,
        an alert: a rollback an alert started, even one a kill cut off, holds off another
        alert's); None when none was started, the last one failed or was cut off, or the
        timeline is unreadable."""
        if self.read_timeline is None or action not in LASTING_ACTIONS:
            return None
        try:
            entries = await asyncio.to_thread(self.read_timeline, context.incident_id)
        except Exception:  # no such incident (an alert's), or the store is out
            return None
        started_at, running = None, False  # the episode's last start, and it unfinished
        for entry in entries:
            data, ours = entry.data, entry.data.get("action") == action
            if entry.kind == "note" and data.get("lost") and running and action != "rollback":
                started_at = None  # a start a kill cut off (``note_lost``)
            elif entry.kind == "action_started" and ours:
                running = data.get("episode", 0) == context.episode
                started_at = entry.at if running else started_at
            elif entry.kind == "action_finished" and ours and running:  # that start's end
                running = False
                if data.get("result") == "failed" or data.get("kept") is False:
                    started_at = None
        return None if started_at is None else max(self.wall_clock() - started_at, 0.0)

    async def _why_not(self, action: str, context: ResponseContext) -> str | None:
        """Why the action does not run here: it does not apply to the component, or another
        replica holds it for this incident; None when it runs."""
        # Another service's incident acts on no agent, named like one or not.
        guard = self._agent(context) if action in AGENT_ACTIONS and not context.service else None
        svc = context.service
        whose = f"its incident is service {svc}'s, from /v1/traces; {action} acts on ERS's own"
        if action in AGENT_ACTIONS and svc:
            return f"{whose} agents, not on {svc}'s"
        if action in AGENT_ACTIONS and guard is None:
            agents = ", ".join(sorted(self.team.guards))
            return f"'{context.component}' is not an agent ({agents}); {action} acts on agents"
        if action in OWN_ACTIONS and svc:
            return f"{whose} chat and state, not on {svc}"
        if action in WITHHOLDING_ACTIONS and guard and guard.breaker.state is BreakerState.DISABLED:
            return (
                f"an operator disabled {guard.name}'s breaker (every call let through); "
                f"`ers breakers enable {guard.name}` lets ERS {action.replace('_', ' ')} again "
                f"(for this incident once this skip's cooldown, {self.cooldown_s:g} s, is over)"
            )
        if action == "trim_caches" and context.source == ALERTMANAGER and self.memory:
            share, line = await asyncio.to_thread(self.memory)
            if share < line:
                return (
                    f"memory here is at {share:.0%} of the limit, under the {line:.0%} line, so "
                    "trimming would free nothing that matters (the alert may be about another "
                    "replica, which trims its own caches when its memory check fails)"
                )
        if action in FLEET_WIDE_ACTIONS and self.claims is not None:
            name = claim_name(action, context.episode)
            hold = ROLLBACK_HOLD_S if action == "rollback" else self.cooldown_s  # or running
            holder = await claim(self.claims, self.replica, context.incident_id, name, hold)
            if holder is not None:
                # Taken, not necessarily done: it may have failed (then given back).
                return (
                    f"replica {holder} took {action} for this incident (its entry says how it went)"
                )
        return None

    async def _run(self, action: str, context: ResponseContext) -> ActionResult:
        """Start ``action`` (its timeline says so) and run it; a failure is its result."""
        started = {"action": action, "episode": context.episode}
        await self._note(context, "action_started", f"{action} started", started)
        try:
            # A rollback runs to its end (restic's calls have their limits): cut, it paused
            # every writer in vain and ran again at the alert's next delivery.
            async with asyncio.timeout(None if action == "rollback" else ACTION_LIMIT_S):
                return await self._actions[action](context)
        except Exception as exc:  # an action must never take the service down
            # A named failure says what to do in its message; only a surprise needs the trace.
            named = isinstance(exc, BackupError | ErsError)
            why, incident = f"{type(exc).__name__}: {exc}", context.incident_id
            log.error("action %s failed for %s: %s", action, incident, exc, exc_info=not named)
            return ActionResult(action, "failed", why)

    def _cannot_run(self, action: str) -> ActionResult | None:
        """What ``action`` says without starting: it is off, or not set up, here."""
        if action == "rollback" and not self.rollback_allowed:
            why = "rollbacks are disabled (emergency_rollback_enabled=false)"
            return ActionResult(action, "not_available", why)
        if action == "rollback" and not self.auto_rollback:
            why = "automatic rollback is off; a person must approve a rollback"
            return ActionResult(action, "approval_needed", why)
        if action in ("rollback", "emergency_backup") and getattr(self, action) is None:
            return ActionResult(action, "not_available", "backups are not set up")
        if action == "minimal_response_mode" and self.minimal_mode is None:
            return ActionResult(action, "not_available", "chat has no minimal mode here")
        return None

    async def _skip(self, action: str, context: ResponseContext, reason: str) -> ActionResult:
        result = ActionResult(action, "skipped", reason)
        await self._note(
            context,
            "action_skipped",
            f"{action}: skipped — {reason}",
            {"action": action, "result": "skipped", "reason": reason},
        )
        if self.on_action is not None:
            self.on_action(context, result)
        return result

    def _forget_old(self, now: float) -> None:
        for key, at in list(self._last_run.items()):
            if now - at >= self.cooldown_s:
                del self._last_run[key]

    async def _note(self, context: ResponseContext, kind: str, message: str, data: dict) -> None:
        """Write on the incident's timeline, a round trip to its store: off the event loop."""
        if self.timeline is None:
            return
        try:
            await asyncio.to_thread(
                self.timeline.add_timeline, context.incident_id, kind, message, context.source, data
            )
        except Exception:
            log.exception("could not write the timeline of %s", context.incident_id)

    # --- actions ------------------------------------------------------------------------

    def _agent(self, context: ResponseContext):  # noqa: ANN202
        try:
            return self.team.get(context.component)
        except UnknownAgent:
            return None

    async def _isolate(self, context: ResponseContext) -> ActionResult:
        guard = self._agent(context)
        assert guard is not None  # _why_not skips a component that is no agent
        forced = guard.breaker.snapshot().get("forced")
        if forced and forced.get("source") != context.source:
            # An operator's isolation (or another automatic one) is not taken over: its
            # holder releases it, and this one's release would have lifted it.
            return ActionResult(
                "isolate",
                "skipped",
                f"breaker '{guard.name}' is forced open by {forced.get('source')} already "
                f"({forced.get('reason')}); left to them",
            )
        message = guard.breaker.force_open(
            context.reason[:300],
            context.source,
            ttl_s=context.ttl_s or self.isolate_ttl_s,
            incident=context.incident_id,
        )
        return await self._kept(ActionResult("isolate", "success", message))

    async def _kept(self, result: ActionResult) -> ActionResult:
        """``result`` once what it set is saved to outlive the process, else said not kept."""
        if self.keep is None or (problem := await self.keep()) is None:
            return result
        why = f"in force here, not kept across a restart yet ({problem}); saving is retried"
        return dataclasses.replace(result, detail=f"{result.detail}; {why}", kept=False)

    async def _release(self, context: ResponseContext) -> ActionResult:
        guard = self._agent(context)
        assert guard is not None
        return ActionResult("release", "success", guard.breaker.release(source=context.source))

    async def _restart_agent(self, context: ResponseContext) -> ActionResult:
        guard = self._agent(context)
        assert guard is not None
        if not await self.team.restart(guard):
            return ActionResult(
                "restart_agent",
                "not_available",
                f"agent '{guard.name}' has no factory to build it again: a remote agent (kind:"
                " http) runs in a process of its own, restarted where it runs, not by ERS",
            )
        return ActionResult("restart_agent", "success", f"new {guard.name} instance in place")

    async def _serve_cached(self, context: ResponseContext) -> ActionResult:
        guard = self._agent(context)
        assert guard is not None
        ttl_s = context.ttl_s or self.isolate_ttl_s
        guard.fallback.serve_cached_for(ttl_s)
        return ActionResult(
            "serve_cached",
            "success",
            f"for {ttl_s:g} s, {guard.name} answers from its last good answers "
            f"({self.team.answers.count(guard.name)} cached) without being called",
        )

    async def _emergency_backup(self, context: ResponseContext) -> ActionResult:
        assert self.emergency_backup is not None  # _cannot_run said so otherwise
        taken, detail = await self.emergency_backup(context)
        return ActionResult("emergency_backup", "success" if taken else "skipped", detail)

    async def _minimal_response_mode(self, context: ResponseContext) -> ActionResult:
        assert self.minimal_mode is not None
        ttl_s = context.ttl_s or self.isolate_ttl_s
        self.minimal_mode.enter(ttl_s, context.reason, context.incident_id)
        what = f"for {ttl_s:g} s, chat answers with short guidance and calls no agent"
        return await self._kept(ActionResult("minimal_response_mode", "success", what))

    async def _rollback(self, context: ResponseContext) -> ActionResult:
        assert (rollback := self.rollback) is not None
        detail = {"beforeIncident": context.incident_id, "reason": context.reason}
        done = await audited_rollback(
            self.audit, context.source, detail, lambda run: rollback(context, run)
        )
        return ActionResult("rollback", "success", done)

    async def _trim_caches(self, context: ResponseContext) -> ActionResult:
        dropped = self.team.answers.trim(keep=len(self.team.answers) // 4)
        return ActionResult("trim_caches", "success", f"dropped {dropped} cached answers")
