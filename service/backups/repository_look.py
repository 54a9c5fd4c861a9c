"""What the status says of the backup repository's problem, read without holding it up.

restic (which opens the repository and tries the password, about half a second, or until
its own time limit when the repository hangs) is asked at most every
``PROBLEM_READ_EVERY_S``, one ask at a time, in the background: a status read goes on the
last finding at once, and waits only for the very first ask. A local repository's config
file is read between asks, a cheap sign that it is still there. The repository check writes
its own finding here too (``seen``), and so does a backup or a rollback (``watching``), so
the status says what was last found by any.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Protocol

from backup import BackupError, RepositoryMissing, RepositoryReplaced, RollbackFailed
from backup.errors import (
    PasswordFileUnreadable,
    RepositoryNotReached,
    RepositoryReadOnly,
    WrongPassword,
)
from backup.identity import is_local

log = logging.getLogger("ers.backups")

# The repository's problem is told again from a restic call at most this often.
PROBLEM_READ_EVERY_S = 10.0
# What keeps every operation from opening the repository, whichever it is, and what the
# repository check meets and reports too, in the same words.
REPOSITORY_REFUSALS = (
    WrongPassword,
    PasswordFileUnreadable,
    RepositoryNotReached,
    RepositoryMissing,
    RepositoryReplaced,
    RepositoryReadOnly,
)


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
        self._cleared_at = 0.0

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

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """An operation's own word on the repository: refused by it (a password, a mount,
        gone), that is the status's finding at once; done while a problem was the last
        finding, the next status read asks restic again and waits for it (a backup of
        nothing changed may not have opened the repository at all). Before, the status told
        the state before for up to ``PROBLEM_READ_EVERY_S``: a backup failing on a wrong
        password beside a status of 31 backups, one done beside "unavailable"."""
        try:
            yield
        except BackupError as exc:
            cause = exc.cause if isinstance(exc, RollbackFailed) else exc
            if isinstance(cause, REPOSITORY_REFUSALS):
                self.seen = (time.monotonic(), str(cause))
            raise
        if self.seen is not None and self.seen[1] is not None:
            # Not an ask begun before it either, whose finding is older than this.
            self.seen, self._asking, self._cleared_at = None, None, time.monotonic()

    async def _ask(self, manager: _Manager) -> str | None:
        at = time.monotonic()
        problem = await _look(manager, thorough=True)
        if (self.seen is None or self.seen[0] <= at) and at >= self._cleared_at:
            self.seen = (at, problem)  # not over a newer finding (the check's, a backup's)
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
