"""The emergency-backup cooldown of a fleet: on PostgreSQL every replica keeps its own in the
shared ``system_state`` store, so before an emergency backup a replica reads the one kept
there. Another replica's emergency backup then covers this one's for the rest of its
cooldown, as one of its own would, instead of each replica taking one."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from backup.emergency import EmergencyCooldown
from backup.errors import BackupError
from backup.lineage import RollbackMark
from backup.manager import BackupManager
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


async def none_told() -> list[RollbackMark]:
    """No rollback the audit trail alone tells of (until the service wires its trail)."""
    return []


async def match_cooldown(
    cooldown: EmergencyCooldown,
    manager: BackupManager,
    state: SystemStateBackend | None,
    told: Sequence[RollbackMark] = (),
) -> None:
    """Before an emergency backup: the cooldown that stands, if any. On PostgreSQL (``state``)
    another replica's covers this one's (``follow_fleet_cooldown``); and one whose backup a
    rollback has since put aside (on any replica, or offline: the repository's list is read
    again to see them) ends, lest its snapshot, which holds the state put aside, be given as
    the state from before the new incident."""
    if state is not None:
        await follow_fleet_cooldown(cooldown, state)
    if (recent := cooldown.recent()) is None:
        return
    try:
        await manager.refresh()
    except BackupError as exc:  # the rollbacks known here decide
        log.warning("the snapshot list was not read again before an emergency backup: %s", exc)
    # With the rollbacks only the audit trail tells of (``told``: a kill before the record).
    if any(mark.time > recent.started_at for mark in [*manager.index.marks(), *told]):
        cooldown.end()
        log.info("a rollback since the last emergency backup ended its cooldown")
