"""Where snapshots live: any restic backend string, or a local folder.

The default is an embedded local repository (a folder such as ./var/restic-repo) with a
generated password file readable only by its owner. A repository is created only when asked
(`init_repository`) or on the first start of a brand-new data directory (`may_create`); one
that disappears afterwards is an error, never silently replaced (see `backup.identity`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from backup.errors import BackupError, shown_repository
from backup.identity import RepositoryIdentity, RepositoryRecord, is_local, missing, replaced
from backup.restic import Restic


def normalise_repository(repository: str) -> str:
    """Local paths become absolute (restic runs in other folders); backends pass unchanged."""
    return str(Path(repository).expanduser().resolve()) if is_local(repository) else repository


# How long a process waits for another one that is initialising the same repository.
INIT_WAIT_S = 180.0


class RepositoryInitBusy(BackupError):
    """Another process has held the repository's initialisation lock for too long."""


def ensure_password_file(path: Path) -> Path:
    """Create a random password file (mode 0600) unless one is already there.

    The password is written and synced under a temporary name and then linked into place,
    which fails if the file exists: a process starting at the same moment sees either no
    file or a complete one, never an empty one, and all of them use the same password."""
    path = Path(path).expanduser().resolve()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(32)
    fd, staged = _staged_file(path)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process linked its own first
            os.link(staged, path)
    finally:
        os.unlink(staged)
    return path


def _staged_file(path: Path) -> tuple[int, str]:
    for _ in range(100):
        staged = f"{path}.{secrets.token_hex(6)}.new"
        try:
            return os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), staged
        except FileExistsError:
            continue
    raise BackupError(f"cannot create a temporary file next to {path}")


@dataclass(frozen=True)
class RepositoryConfig:
    """How to reach the repository and the restic binary."""

    repository: str
    password_file: Path
    binary: str = "restic"
    command_timeout_seconds: float = 600.0
    cache_dir: Path | None = None
    # Held while the repository is created, by processes on other machines too (a local
    # repository is also locked with a file next to it).
    init_lock: Callable[[], AbstractAsyncContextManager[object]] | None = None
    # Held around each restic command that locks the repository, exclusive (True) for forget,
    # prune and check, by the other processes that share the repository too: they then take
    # turns as one process's commands do, instead of failing on each other's restic lock.
    turn_lock: Callable[[bool], AbstractAsyncContextManager[object]] | None = None
    # Remembers the repository's id (see `backup.identity`); None: nothing is remembered.
    record_file: Path | None = None


def restic_for(config: RepositoryConfig) -> Restic:
    return Restic(
        normalise_repository(config.repository),
        Path(config.password_file).expanduser(),
        binary=config.binary,
        timeout=config.command_timeout_seconds,
        cache_dir=config.cache_dir,
    )


async def open_identified(
    config: RepositoryConfig, *, may_create: bool = False
) -> RepositoryIdentity:
    """The configured repository and the id it must keep; raises RepositoryMissing or
    RepositoryReplaced when it is not the one `config.record_file` remembers.

    A missing repository is created only with `may_create` (the first start on a brand-new
    data directory) and only while nothing records one; its id is then remembered."""
    restic = restic_for(config)
    await restic.version()
    record = (
        await asyncio.to_thread(RepositoryRecord.read, config.record_file)
        if config.record_file
        else None
    )
    found = await restic.repository_id()
    if found is None:
        if record is not None or not may_create:
            raise missing(restic.repository, record)
        found, _ = await _create(restic, config)
    elif record is not None and found != record.id:
        raise replaced(restic.repository, record, found)
    if config.record_file is not None and record is None:
        await asyncio.to_thread(RepositoryRecord.now(found).write, config.record_file)
    return RepositoryIdentity(restic, found)


@dataclass(frozen=True)
class InitOutcome:
    identity: RepositoryIdentity
    created: bool  # False: a repository was there already and is now the one remembered
    previous_id: str | None  # what the record named before, if anything


async def init_repository(config: RepositoryConfig) -> InitOutcome:
    """The explicit `init`: create the repository if there is none, and remember its id (a
    repository already there is adopted: the operator asked for this one)."""
    restic = restic_for(config)
    await restic.version()
    previous: RepositoryRecord | None = None
    if config.record_file is not None:
        with contextlib.suppress(BackupError):  # an unreadable record is being replaced
            previous = await asyncio.to_thread(RepositoryRecord.read, config.record_file)
    found = await restic.repository_id()
    created = False
    if found is None:
        found, created = await _create(restic, config)
    if config.record_file is not None:
        await asyncio.to_thread(RepositoryRecord.now(found).write, config.record_file)
    return InitOutcome(
        RepositoryIdentity(restic, found), created, previous.id if previous else None
    )


async def adopt_repository(config: RepositoryConfig, expected_id: str) -> InitOutcome:
    """Remember `expected_id`, which another process's `init` made the repository, when it is
    the one at the configured location; raises RepositoryMissing or RepositoryReplaced
    otherwise. Never creates one."""
    restic = restic_for(config)
    found = await restic.repository_id()
    if found is None:
        raise missing(restic.repository, RepositoryRecord(expected_id, ""))
    if found != expected_id:
        raise replaced(restic.repository, RepositoryRecord(expected_id, ""), found)
    previous: RepositoryRecord | None = None
    if config.record_file is not None:
        with contextlib.suppress(BackupError):  # an unreadable record is being replaced
            previous = await asyncio.to_thread(RepositoryRecord.read, config.record_file)
        await asyncio.to_thread(RepositoryRecord.now(found).write, config.record_file)
    return InitOutcome(RepositoryIdentity(restic, found), False, previous.id if previous else None)


async def _create(restic: Restic, config: RepositoryConfig) -> tuple[str, bool]:
    """Two processes that both find no repository and both run ``restic init`` can leave a
    config written under one's master key beside the other's key, which neither opens
    ("ciphertext verification failed"); so initialisation runs under a lock, and the
    repository is looked for again once the lock is held. Returns its id and whether this
    call created it."""
    async with _initialising(restic.repository, config.init_lock):
        found = await restic.repository_id()
        if found is not None:
            return found, False
        if is_local(restic.repository):
            Path(restic.repository).parent.mkdir(parents=True, exist_ok=True)
        # Made with the repository only: a new password beside an existing repository opens
        # nothing, and restic 0.14 then calls the file that went missing a wrong password.
        ensure_password_file(restic.password_file)
        await restic.init()
    created = await restic.repository_id()
    if created is None:
        where = shown_repository(restic.repository)
        raise BackupError(f"restic init left no repository at '{where}'")
    return created, True


@asynccontextmanager
async def _initialising(
    repository: str, init_lock: Callable[[], AbstractAsyncContextManager[object]] | None
) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as held:
        if init_lock is not None:
            await held.enter_async_context(init_lock())
        if is_local(repository):
            await held.enter_async_context(_file_lock(Path(repository)))
        yield


@asynccontextmanager
async def _file_lock(repository: Path, wait_s: float = INIT_WAIT_S) -> AsyncIterator[None]:
    """An exclusive lock on a file beside a local repository, for processes on this machine
    (and on others that share the folder, where the filesystem honours flock)."""
    lock_path = repository.parent / f".{repository.name}.init-lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RepositoryInitBusy(
                        f"another process has been initialising the repository {repository} "
                        f"for over {wait_s:g} s; `fuser {lock_path}` names it"
                    ) from None
                await asyncio.sleep(0.1)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
