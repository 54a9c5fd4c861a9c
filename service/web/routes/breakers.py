"""Circuit breakers: their state, and the operator's reset (the seed's endpoints)."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from service.chat.holds import with_ended_holds
from service.incidents.model import IncidentNotFound, IncidentStoreUnavailable
from service.incidents.service import IncidentService
from service.resilience.breaker import CircuitBreaker, ResetRefused
from service.resilience.breaker_open import MAX_FORCE_OPEN_S, Forcing
from service.resilience.state_keeper import StateKeeper
from service.web.auth import AdminAuth, AdminRead
from service.web.deps import Incidents, Keeper, Team
from service.web.json_route import JsonRoute
from service.web.openapi import errors
from service.web.routes.json_types import AnyNumber, JsonBool, Reason

log = logging.getLogger("ers.breakers")
router = APIRouter(
    route_class=JsonRoute,
    prefix="/api/emergency",
    tags=["circuit breakers"],
    dependencies=[AdminRead],
)


class NoOptions(BaseModel):
    """The body of an action that takes none: an empty object, or no body at all. Before, a
    body was not read, so a "reason" sent with a disable was dropped without a word."""

    model_config = ConfigDict(extra="forbid")


class ResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: JsonBool = Field(False, description="reset even when the agent is still failing")


class ForceOpenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Reason = Field(min_length=1, max_length=500)
    ttlSeconds: Annotated[float, Field(gt=0, le=MAX_FORCE_OPEN_S), AnyNumber] | None = None


async def changed(keeper: StateKeeper, breaker: CircuitBreaker, message: str) -> dict[str, Any]:
    """The reply to a change, once the change is saved to outlive a restart."""
    problem = await keeper.saved()
    if problem is not None:
        message += f"; not saved across restarts yet ({problem}), retried in the background"
    return {"message": message, "saved": problem is None, "breaker": breaker.snapshot()}


async def note_lifted(
    incidents: IncidentService, forcing: Forcing | None, breaker: CircuitBreaker, who: str
) -> None:
    """A note on the incident an isolation was for, once an operator's action lifted it (the
    incident read "mitigated: agent isolated" with nothing to say it no longer was)."""
    if forcing is None or forcing.incident is None or breaker.forcing is forcing:
        return
    note = f"the isolation of {breaker.name} was lifted by {who}: it takes calls again"
    try:
        await asyncio.to_thread(
            incidents.store.add_timeline, forcing.incident, "note", note, who, {}
        )
    except (IncidentNotFound, IncidentStoreUnavailable) as exc:
        log.warning("could not note on %s that %s: %s", forcing.incident, note, exc)


def guard_snapshot(guard: Any) -> dict[str, Any]:
    """The breaker's snapshot, and the seconds left of the agent's cooldown (a rate limit's
    Retry-After longer than a call could wait): while it runs, calls fall back without
    reaching the agent although its breaker is closed. None when there is none."""
    cooldown = guard.cooldown_remaining()
    return {**guard.breaker.snapshot(), "cooldownRemainingS": round(cooldown, 1) or None}


def breaker_report(team: Any) -> dict[str, Any]:
    breakers = {guard.name: guard_snapshot(guard) for guard in team.guards.values()}
    states = [b["state"] for b in breakers.values()]
    return {
        "breakers": breakers,
        "totals": {
            "total": len(states),
            "open": sum(s in ("open", "forced_open") for s in states),
            "closed": sum(s == "closed" for s in states),
            "half_open": sum(s == "half_open" for s in states),
            "forced_open": sum(s == "forced_open" for s in states),
            "disabled": sum(s == "disabled" for s in states),
            "cooling_down": sum(b["cooldownRemainingS"] is not None for b in breakers.values()),
        },
    }


@router.get("/circuit-breakers")
async def list_breakers(team: Team) -> dict[str, Any]:
    return breaker_report(team)


@router.get("/circuit-breakers/{name}", responses=errors(404))
async def get_breaker(name: str, team: Team) -> dict[str, Any]:
    guard = team.get(name)
    return {**guard_snapshot(guard), "history": [e.to_dict() for e in guard.breaker.history()]}


@router.post("/circuit-breaker/{name}/reset", responses=errors(404, 409))
async def reset_breaker(
    name: str,
    team: Team,
    keeper: Keeper,
    incidents: Incidents,
    who: AdminAuth,
    body: ResetRequest | None = None,
) -> dict[str, Any]:
    guard = team.get(name)
    forcing = guard.breaker.forcing
    force = body.force if body is not None else False
    # The cause may be gone although the last failure is recent: the probe asks now.
    probe = None if force else await guard.probe()
    cooling = guard.cooldown_remaining()
    if probe is not None and probe.error is not None and cooling > 0:
        # The agent asked to be left alone and does not answer yet: ending the wait now
        # would only send it the calls it is turning away.
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"agent '{guard.breaker.name}' is cooling down ({cooling:.0f} s left, it asked to "
            f"wait) and its health probe still fails ({probe.error}); let the cooldown run "
            "out, or reset with force",
        )
    try:
        # The probe just reached the agent (or the operator forced it): it takes calls again.
        message = with_ended_holds(
            guard, lambda: guard.breaker.reset(force=force, probe=probe, source=who)
        )
    except ResetRefused as refused:
        raise HTTPException(status.HTTP_409_CONFLICT, str(refused)) from None
    await note_lifted(incidents, forcing, guard.breaker, who)
    return {"reset": True, "force": force, **await changed(keeper, guard.breaker, message)}


@router.post("/circuit-breaker/{name}/force-open", responses=errors(404))
async def force_open_breaker(
    name: str, body: ForceOpenRequest, team: Team, keeper: Keeper, who: AdminAuth
) -> dict[str, Any]:
    guard = team.get(name)
    was_disabled = guard.breaker.state.value == "disabled"
    message = guard.breaker.force_open(body.reason, source=who, ttl_s=body.ttlSeconds)
    if was_disabled:  # one state at a time: the disable is gone, and said to be
        message += "; it was disabled, and when this forced open ends it guards calls again"
    return await changed(keeper, guard.breaker, message)


@router.post("/circuit-breaker/{name}/release", responses=errors(404))
async def release_breaker(
    name: str,
    team: Team,
    keeper: Keeper,
    incidents: Incidents,
    who: AdminAuth,
    body: NoOptions | None = None,
) -> dict[str, Any]:
    guard = team.get(name)
    forcing = guard.breaker.forcing
    message = with_ended_holds(guard, lambda: guard.breaker.release(source=who))
    await note_lifted(incidents, forcing, guard.breaker, who)
    return await changed(keeper, guard.breaker, message)


@router.post("/circuit-breaker/{name}/disable", responses=errors(404))
async def disable_breaker(
    name: str,
    team: Team,
    keeper: Keeper,
    incidents: Incidents,
    who: AdminAuth,
    body: NoOptions | None = None,
) -> dict[str, Any]:
    """Let every call of the agent through, unguarded, until enabled (kept across restarts)."""
    guard = team.get(name)
    forcing = guard.breaker.forcing
    message = guard.breaker.disable(source=who)
    if forcing and guard.breaker.state.value == "disabled":  # the forced open is gone
        message += f"; its forced open by {forcing.source} is lifted"
        await note_lifted(incidents, forcing, guard.breaker, who)
    return await changed(keeper, guard.breaker, message)


@router.post("/circuit-breaker/{name}/enable", responses=errors(404))
async def enable_breaker(
    name: str, team: Team, keeper: Keeper, who: AdminAuth, body: NoOptions | None = None
) -> dict[str, Any]:
    guard = team.get(name)
    message = guard.breaker.enable(source=who)
    return await changed(keeper, guard.breaker, message)
