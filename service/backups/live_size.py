"""The live state's size the status shows, read without holding the status up.

On PostgreSQL the size is a query on a connection of its own, and the status is read often:
the size is read again at most every ``READ_EVERY_S``, by one read at a time, in the
background: a status shows the last size known at once (one read old at most), and waits
``WAIT_S`` at most only for the first read, once. A hung database server then holds up that
read alone, never a status request after the first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from backup import BackupError

log = logging.getLogger("ers.backups")
READ_EVERY_S = 10.0
WAIT_S = 1.0


class LiveSize:
    def __init__(self, read: Callable[[], Awaitable[dict[str, int]]]) -> None:
        """``read``: bytes per component, or BackupError saying why they are not known."""
        self._read = read
        self._known: tuple[float, int | str] | None = None
        self._reading: asyncio.Future[int | str] | None = None
        # The first read, once a status has waited WAIT_S for it: the next ones do not.
        self._waited_out: asyncio.Future[int | str] | None = None

    async def get(self) -> int | str:
        """The live state's bytes, or why they are not known."""
        if self._known is not None and time.monotonic() - self._known[0] < READ_EVERY_S:
            return self._known[1]
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read_now())
        if self._known is not None:  # the next status shows what this read finds
            return self._known[1]
        if self._reading is self._waited_out:  # each status waited a second for it again
            return f"not read within {WAIT_S:g} s"
        try:
            async with asyncio.timeout(WAIT_S):
                return await asyncio.shield(self._reading)
        except TimeoutError:
            self._waited_out = self._reading
            return f"not read within {WAIT_S:g} s"

    async def _read_now(self) -> int | str:
        size: int | str
        try:
            size = sum((await self._read()).values())
        except BackupError as exc:
            log.warning("the live state's size is not known: %s", exc)
            size = str(exc)
        self._known = (time.monotonic(), size)
        return size
