"""Which replica of a fleet runs an incident's fleet-wide action (isolate, emergency backup,
rollback): the first to claim it in the shared database, within the responder's cooldown.

A claim is given back when its action failed: a failure holds nothing back, so the alert's
next delivery, to this replica or another, runs the action again instead of being told that
a replica took it."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

log = logging.getLogger("ers.responder")

# Actions whose effect reaches every replica: one replica runs each per incident.
FLEET_WIDE_ACTIONS = frozenset({"isolate", "emergency_backup", "rollback"})


class ActionClaims(Protocol):
    def claim_action(
        self, incident_id: str, action: str, replica: str, cooldown_s: float
    ) -> str | None:
        """Claim the action for this replica: None when it may run it, else who holds it."""
        ...

    def release_action(self, incident_id: str, action: str, replica: str) -> None:
        """Give back this replica's claim of the action (it failed)."""
        ...


def claim_name(action: str, episode: int) -> str:
    """The claim of an action for one episode of its incident (a reopening is a new one)."""
    return action if not episode else f"{action} (reopening {episode})"


async def claim(
    claims: ActionClaims, replica: str, incident_id: str, name: str, cooldown_s: float
) -> str | None:
    """Who holds the claim when another replica does, else None (this one runs it, also
    when the database is out: better here than nowhere)."""
    try:
        return await asyncio.to_thread(claims.claim_action, incident_id, name, replica, cooldown_s)
    except Exception as exc:
        log.warning("%s runs unclaimed for %s: %s", name, incident_id, exc)
        return None


async def give_back(claims: ActionClaims, replica: str, incident_id: str, name: str) -> None:
    try:
        await asyncio.to_thread(claims.release_action, incident_id, name, replica)
    except Exception as exc:  # the claim then lapses with the cooldown
        log.warning("the claim of %s for %s was not given back: %s", name, incident_id, exc)
