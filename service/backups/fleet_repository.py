"""On PostgreSQL, `ers backup init` on one replica makes the repository it created or adopted
the fleet's: every replica adopts it within ``fleet_poll_interval_s``.

Each replica remembers its repository's id in its own data directory; an `init` sent to one
replica (through a load balancer: to any one) rewrote that one's record only, and the others
kept refusing every backup with "the restic repository ... is <new>, not <old>", their
`repository` health check unhealthy, though the operator had done what the message asked.
The replica that ran `init` stamps the id in the shared system_state store; the others read
the stamp every poll (and at start, when they may have missed it) and adopt that id, if it
is the repository at their configured location: nothing is ever created this way.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from datetime import datetime
from typing import Any

from backup import BackupError
from backup.events import RepositoryInitialised
from backup.identity import RECORD_FILE_NAME, RepositoryRecord
from service.backups.service import BackupService
from service.errors import StoreUnavailable
from service.stores.base import SystemStateBackend
from service.tasks import spawn

log = logging.getLogger("ers.backups")

KEY = "repository"


class FleetRepository:
    """Stamps this replica's `init`, and adopts the repository another replica's made."""

    def __init__(self, backups: BackupService, state: SystemStateBackend, replica: str) -> None:
        self._backups, self._state, self._replica = backups, state, replica
        self._seen: Any = None
        self._stamping: set[asyncio.Task[None]] = set()

    def on_event(self, event: object) -> None:
        """A backup listener: after this replica's `init`, stamp the id for the others."""
        if not isinstance(event, RepositoryInitialised):
            return
        stamp = {"id": event.repository_id, "replica": self._replica, "at": time.time()}
        stamp["change"] = secrets.token_hex(4)
        self._seen = stamp
        spawn(self._stamping, self._stamp(stamp))

    async def _stamp(self, stamp: dict[str, Any]) -> None:
        try:
            await self._state.put(KEY, stamp)
        except StoreUnavailable as exc:
            log.warning(
                "the repository `init` adopted was not shared with the fleet (%s): run "
                "`ers backup init` on each other replica",
                exc,
            )

    async def follow(self, every_s: float) -> None:
        """At start and every ``every_s``: adopt the repository another replica's `init`
        made the fleet's, when this replica's record names another one."""
        stamp = await self._read()
        while True:
            if stamp is not None and stamp != self._seen:
                self._seen = stamp
                await self._adopt(stamp)
            await asyncio.sleep(every_s)
            stamp = await self._read()

    async def _adopt(self, stamp: dict[str, Any]) -> None:
        repository_id, by = str(stamp.get("id", "")), str(stamp.get("replica", ""))
        record_file = self._backups.settings.data_dir / RECORD_FILE_NAME
        try:
            record = await asyncio.to_thread(RepositoryRecord.read, record_file)
        except BackupError:
            record = None  # unreadable: adopting the fleet's repository rewrites it
        if not repository_id or (
            record is not None
            # A record written after the stamp (an offline `init` since) is the newer word.
            and (record.id == repository_id or _seconds(record.recorded_at) > stamp.get("at", 0))
        ):
            return
        try:
            await self._backups.init(adopted_id=repository_id)
        except BackupError as exc:
            log.error(
                "replica %s made repository %s the fleet's with `ers backup init`, and this "
                "replica cannot adopt it: %s",
                by,
                repository_id[:8],
                exc,
            )
            return
        log.warning(
            "adopted repository %s, which replica %s made the fleet's with `ers backup init`",
            repository_id[:8],
            by,
        )

    async def _read(self) -> Any:
        try:
            return await self._state.get(KEY)
        except StoreUnavailable as exc:
            log.warning("the fleet's repository stamp not read: %s", exc)
            return self._seen


def _seconds(iso: str) -> float:
    """A record's ``recordedAt`` as epoch seconds (0 when it is not a time)."""
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return 0.0
