"""What the status says of the backup repository's problem, read without holding it up.

restic (which opens the repository and tries the password, about half a second, or until
its own time limit when the repository hangs) is asked at most every
``PROBLEM_READ_EVERY_S``, one ask at a time, in the background: a status read goes on the
last finding at once, and waits only for the very first ask. A local repository's config
file is read between asks, a cheap sign that it is still there. The repository check writes
its own finding here too (``seen``), so the status says what was last found by either.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from backup import BackupError
from backup.identity import is_local

log = logging.getLogger("ers.backups")

# The repository's problem is told again from a restic call at most this often.
PROBLEM_READ_EVERY_S = 10.0


class _Restic(Protocol):
    repository: str

    def read_only(self) -> str | None: ...


class _Manager(Protocol):
    @property
    def restic(self) -> _Restic: ...

    async def verify_repository(self, *, thorough: bool = False) -> str: ...


class RepositoryLook:
    def __init__(self) -> None:
        # restic's last open of the repository (the status's or the check's): when, what
        # it found (None: no problem).
        self.seen: tuple[float, str | None] | None = None
        self._asking: asyncio.Future[str | None] | None = None

    async def problem(self, manager: _Manager) -> str | None:
        """Why the repository cannot be used (gone, replaced, read-only, its password
        refused), or None."""
        last = self.seen
        if last is None or time.monotonic() - last[0] >= PROBLEM_READ_EVERY_S:
            if self._asking is None or self._asking.done():
                self._asking = asyncio.ensure_future(self._ask(manager))
            if last is None:  # nothing found yet: the first ask's finding
                return await asyncio.shield(self._asking)
        if last[1] or not is_local(manager.restic.repository):
            return last[1]
        return await _look(manager, thorough=False)

    async def _ask(self, manager: _Manager) -> str | None:
        at = time.monotonic()
        problem = await _look(manager, thorough=True)
        if self.seen is None or self.seen[0] <= at:  # not over a newer finding (the check's)
            self.seen = (at, problem)
        return problem


async def _look(manager: _Manager, *, thorough: bool) -> str | None:
    try:
        await manager.verify_repository(thorough=thorough)
        return manager.restic.read_only()
    except BackupError as exc:
        return str(exc)
    except Exception as exc:  # a status read must still answer, and the next ask still run
        log.exception("the backup repository could not be looked at")
        return f"the repository could not be looked at ({type(exc).__name__}): see ERS's log"
