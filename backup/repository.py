"""Where snapshots live: any restic backend string, or a local folder initialised on first use.

The default is an embedded local repository (a folder such as ./var/restic-repo) with a
generated password file readable only by its owner.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from backup.restic import Restic

# restic backends are written "<scheme>:<location>"; anything else is a local path.
_BACKEND = re.compile(r"^(?:local|sftp|rest|s3|b2|azure|gs|swift|rclone):")


def is_local(repository: str) -> bool:
    return not _BACKEND.match(repository)


def normalise_repository(repository: str) -> str:
    """Local paths become absolute (restic runs in other folders); backends pass unchanged."""
    return str(Path(repository).expanduser().resolve()) if is_local(repository) else repository


def ensure_password_file(path: Path) -> Path:
    """Create a random password file (mode 0600) unless one is already there."""
    path = Path(path).expanduser().resolve()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path  # another process created it first; use theirs
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return path


@dataclass(frozen=True)
class RepositoryConfig:
    """How to reach the repository and the restic binary."""

    repository: str
    password_file: Path
    binary: str = "restic"
    command_timeout_seconds: float = 600.0
    cache_dir: Path | None = None


def restic_for(config: RepositoryConfig) -> Restic:
    return Restic(
        normalise_repository(config.repository),
        ensure_password_file(config.password_file),
        binary=config.binary,
        timeout=config.command_timeout_seconds,
        cache_dir=config.cache_dir,
    )


async def open_repository(config: RepositoryConfig) -> Restic:
    """A wrapper for the configured repository, initialising it when it does not exist yet."""
    restic = restic_for(config)
    await restic.version()
    if not await restic.is_initialised():
        if is_local(restic.repository):
            Path(restic.repository).parent.mkdir(parents=True, exist_ok=True)
        await restic.init()
    return restic
