"""Who may change the state: a running service holds it for its whole life, and an offline
command that changes the data directory or the repository refuses while it does.

On SQLite the lock is an ``flock`` on ``<data_dir>/.ers.lock``. The kernel drops it when its
holder exits, however it exits (a kill -9 too), so a lock file left behind never blocks
anyone: the lock is the flock, not the file's existence. The file only says who holds it
(pid, host, role), for the message. The file is never deleted: a process could otherwise lock
a name that another has already replaced.

On PostgreSQL several replicas share the state, so each holds a shared session advisory lock
instead (``service.fleet.presence``), and an offline command takes it exclusively.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

from backup.swap_journal import SwapRecoveryFailed
from service.errors import StateFileUnreadable
from service.settings import Settings, SettingsError

LOCK_FILE_NAME = ".ers.lock"
OFFLINE_ADVICE = (
    "stop the service first, or run the command without --offline to go through the service"
)


class DataDirInUse(RuntimeError):
    """The state is held by another process (a running service, or an offline command)."""


class LiveStateUnreachable(RuntimeError):
    """The fleet's lock on the live state could not be taken: its PostgreSQL server does not
    answer. A failed start-up (exit 1), not a setting to fix (exit 2)."""


class DataDirUnusable(RuntimeError):
    """The data directory cannot be created or written (a file, or a read-only place)."""


def holder_line(role: str) -> str:
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"{role} (pid {os.getpid()} on {socket.gethostname()}, since {since})"


class DataDirLock:
    """An exclusive, non-blocking flock on the data directory's lock file."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path, role: str) -> DataDirLock:
        """Take the lock or raise DataDirInUse naming the holder (DataDirUnusable when there
        can be no directory there)."""
        path = data_dir / LOCK_FILE_NAME
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise DataDirUnusable(
                f"invalid setting 'data_dir': cannot keep the data in {data_dir} "
                f"({exc.strerror or exc}); set ERS_DATA_DIR to a directory this user may "
                "create and write"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise DataDirInUse(f"{data_dir} is in use by {read_holder(path)}") from None
        os.ftruncate(fd, 0)
        os.write(fd, (holder_line(role) + "\n").encode())
        return cls(data_dir, fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor releases the flock


def read_holder(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process (it has not written its pid yet)"


@contextlib.contextmanager
def offline_lock(data_dir: Path, *, mutating: bool) -> Iterator[bool]:
    """For an offline command: yields True while it holds the data directory.

    A command that changes the data directory or the repository refuses when the lock is
    held; a read goes on without it (yielding False), and then must leave the service's
    working files alone.
    """
    lock: DataDirLock | None = None
    try:
        lock = DataDirLock.acquire(data_dir, "ers backup --offline")
    except DataDirInUse as exc:
        if mutating:
            raise DataDirInUse(f"{exc}: {OFFLINE_ADVICE}") from None
    try:
        yield lock is not None
    finally:
        if lock is not None:
            lock.release()


@contextlib.asynccontextmanager
async def offline_access(settings: Settings, *, mutating: bool) -> AsyncIterator[bool]:
    """The offline command's side of the lock, on either engine; yields whether it owns
    the data directory (and may clear what an interrupted run left there)."""
    if settings.database_url is not None:
        from service.fleet.presence import offline_exclusive

        if mutating:
            async with offline_exclusive(settings.database_url.get_secret_value()):
                yield True
        else:
            yield False
        return
    with offline_lock(settings.data_dir, mutating=mutating) as owned:
        yield owned


@contextlib.asynccontextmanager
async def hold_state(settings: Settings, held: DataDirLock | None = None) -> AsyncIterator[None]:
    """The service's side: held from the start of the lifespan to the end of its teardown.

    On SQLite a second service on the same data directory refuses to start; on PostgreSQL
    replicas share the state and each holds the fleet's lock in shared mode. ``held``: the
    data directory's lock, already taken by ``ers serve`` before the server started (so a
    refusal is one line before anything else is said); it is released here.
    """
    if held is not None:
        try:
            yield
        finally:
            held.release()
        return
    try:
        release = await _take_for_service(settings)
    except DataDirInUse as exc:
        # Said by `ers serve` in one line with exit 2, as the SQLite service's refusal is.
        raise SettingsError(str(exc)) from None
    except LiveStateUnreachable as exc:
        logging.getLogger("ers").error("%s", exc)  # one line; its traceback is left out
        raise
    try:
        yield
    finally:
        await release()


async def _take_for_service(settings: Settings) -> Callable[[], Awaitable[None]]:
    if settings.database_url is not None:
        from service.fleet.presence import ReplicaPresence

        # The state is on the server; the data directory still holds this replica's backup
        # work folder and repository record, and the disk check reads it.
        try:
            await asyncio.to_thread(settings.data_dir.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise SettingsError(
                f"invalid setting 'data_dir': cannot keep the data in {settings.data_dir} "
                f"({exc.strerror or exc}); set ERS_DATA_DIR to a directory this user may "
                "create and write"
            ) from None

        presence = ReplicaPresence(settings.database_url.get_secret_value())
        await presence.start()
        return presence.stop
    lock = await asyncio.to_thread(lock_for_service, settings.data_dir)

    async def release() -> None:
        lock.release()

    return release


def lock_for_service(data_dir: Path) -> DataDirLock:
    """The SQLite service's lock on its data directory, or DataDirInUse saying who has it."""
    try:
        return DataDirLock.acquire(data_dir, "ers serve")
    except DataDirInUse as exc:
        raise DataDirInUse(
            f"refusing to start: {exc}; two processes changing one data directory corrupt it: "
            "stop the other one (or let the offline command finish), or give this service its "
            "own ERS_DATA_DIR and its own ERS_RESTIC_REPOSITORY (services sharing a repository "
            "list, keep and roll back to each other's snapshots)"
        ) from None


class HideRefusalTraceback(logging.Filter):
    """uvicorn logs a failed start-up with its traceback; a refusal is already said in one
    line by the lifespan, so its traceback is dropped."""

    refusals = (
        DataDirInUse.__name__,
        LiveStateUnreachable.__name__,
        SwapRecoveryFailed.__name__,
        StateFileUnreadable.__name__,
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(refusal in message for refusal in self.refusals)
