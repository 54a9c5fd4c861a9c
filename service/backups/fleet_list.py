"""On PostgreSQL, a snapshot one replica makes or forgets shows in every replica's list
within ``fleet_poll_interval_s``, not only at its next ``backup_refresh_interval_s``.

Replicas share one repository, but each serves the snapshot list from memory: the one that
ran the fleet's scheduled backups listed five new snapshots while the others' `ers status`
said `backups 0` for minutes. The replica that changed the repository (a backup, a
rollback's safety snapshot, retention) stamps ``snapshots`` in the fleet's stamps
(``service.fleet.stamps``, not the backed-up system_state, which it would change each time);
every replica reads the stamp every poll and re-reads its list (`restic snapshots`) when the
stamp moved.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from backup import BackupError
from backup.events import BackupSucceeded, RollbackFinished, SnapshotsForgotten
from service.backups.service import BackupService, BackupsUnavailable
from service.errors import StoreUnavailable
from service.fleet.stamps import FleetStamps
from service.tasks import spawn

log = logging.getLogger("ers.backups")

KEY = "snapshots"


class FleetSnapshotList:
    """Stamps this replica's changes to the repository, and follows the others'."""

    def __init__(self, backups: BackupService, state: FleetStamps, replica: str) -> None:
        self._backups, self._state, self._replica = backups, state, replica
        self._seen: Any = None
        self._stamping: set[asyncio.Task[None]] = set()

    def on_event(self, event: object) -> None:
        """A backup listener: after a change this replica made, stamp it for the others."""
        if isinstance(event, RollbackFinished) and not event.ok:
            return
        if not isinstance(event, BackupSucceeded | RollbackFinished | SnapshotsForgotten):
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # not published on the event loop: nothing to stamp with
            return
        stamp = {"at": time.time(), "replica": self._replica, "change": secrets.token_hex(4)}
        self._seen = stamp  # this replica's own list has the change already
        spawn(self._stamping, self._stamp(stamp))

    async def _stamp(self, stamp: dict[str, Any]) -> None:
        try:
            await self._state.put(KEY, stamp)
        except StoreUnavailable as exc:  # the others see it at their next refresh instead
            log.warning("a change of the snapshot list was not shared with the fleet: %s", exc)

    async def follow(self, every_s: float) -> None:
        """Every ``every_s``: re-read the list when another replica stamped a change."""
        await self._backups.connected.wait()
        self._seen = await self._read()
        while True:
            await asyncio.sleep(every_s)
            stamp = await self._read()
            if stamp is None or stamp == self._seen:
                continue
            self._seen = stamp
            log.info("re-reading the snapshot list: another replica changed the repository")
            try:
                await self._backups.refresh()
            except (BackupError, BackupsUnavailable) as exc:
                log.error("refreshing the snapshot list after another replica's change: %s", exc)

    async def _read(self) -> Any:
        try:
            return await self._state.get(KEY)
        except StoreUnavailable as exc:
            log.warning("the fleet's snapshot list stamp not read: %s", exc)
            return self._seen
