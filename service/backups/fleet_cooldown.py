"""The emergency-backup cooldown of a fleet: on PostgreSQL every replica keeps its own in the
shared ``system_state`` store, so before an emergency backup a replica reads the one kept
there. Another replica's emergency backup then covers this one's for the rest of its
cooldown, as one of its own would, instead of each replica taking one."""

from __future__ import annotations

import logging

from backup.emergency import EmergencyCooldown
from service.errors import StoreUnavailable
from service.stores.base import SystemStateBackend

log = logging.getLogger("ers.backups")

# The key the state keeper keeps the cooldown under.
EMERGENCY_COOLDOWN_KEY = "emergency_backup"


async def follow_fleet_cooldown(cooldown: EmergencyCooldown, state: SystemStateBackend) -> None:
    """Take on the cooldown the fleet keeps when this replica has none running."""
    if cooldown.recent() is not None:
        return
    try:
        record = await state.get(EMERGENCY_COOLDOWN_KEY)
    except StoreUnavailable as exc:  # the backup goes ahead: better two than none
        log.warning("the fleet's emergency-backup cooldown was not read: %s", exc)
        return
    if record:
        try:
            words = cooldown.resume(record)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("the fleet's emergency-backup cooldown is unreadable: %r", exc)
            return
        if words:
            log.info("%s, taken by another replica", words)
