"""RepositorySharing: restic's own lock rule kept inside one process, so that this process
never meets a lock it holds itself.

restic lets any number of commands that only add or read (backup, restore, copy) share a
repository and gives forget, prune and check it alone; a command that meets the other kind
of lock fails at once ("repository is already locked"). Two commands of one process are
made to wait for each other here instead, and a lock restic still reports is then held by
another process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class RepositorySharing:
    """Shared or exclusive use of the repository by this process; a waiting exclusive use
    goes before shared ones that come after it, so a stream of reads cannot starve it."""

    def __init__(self) -> None:
        self._sharing = 0
        self._exclusive = False
        self._exclusive_waiting = 0
        self._changed = asyncio.Event()

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        await self._until(lambda: not self._exclusive and not self._exclusive_waiting)
        self._sharing += 1
        try:
            yield
        finally:
            self._sharing -= 1
            self._notify()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        self._exclusive_waiting += 1
        try:
            await self._until(lambda: not self._exclusive and self._sharing == 0)
        except BaseException:
            self._exclusive_waiting -= 1
            self._notify()  # shared uses that waited behind this one may go on
            raise
        self._exclusive_waiting -= 1
        self._exclusive = True
        try:
            yield
        finally:
            self._exclusive = False
            self._notify()

    async def _until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            await self._changed.wait()

    def _notify(self) -> None:
        # Every waiter holds the event of its wait; a new one serves the next change.
        self._changed.set()
        self._changed = asyncio.Event()
