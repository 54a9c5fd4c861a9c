"""Which restic repository the backups of a data directory go to, remembered by its id.

A repository that disappears (a moved folder, an emptied bucket) must not be replaced by a
new, empty one without anyone noticing: every snapshot would look lost while backups go on
"succeeding". So the id restic gives a repository (`restic cat config`) is written to a small
record file in the data directory when the repository is created or first opened, and each
open, backup and health check compares the repository it reaches with that id.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backup.errors import RepositoryMissing, RepositoryReplaced, shown_repository
from backup.restic import Restic

RECORD_FILE_NAME = "restic-repository.json"
# restic backends are written "<scheme>:<location>"; anything else is a local path.
_BACKEND = re.compile(r"^(?:local|sftp|rest|s3|b2|azure|gs|swift|rclone):")


def is_local(repository: str) -> bool:
    return not _BACKEND.match(repository)


@dataclass(frozen=True)
class RepositoryRecord:
    """What the data directory remembers of its repository (never a location or a secret:
    a backend string may carry credentials)."""

    id: str
    recorded_at: str

    @classmethod
    def read(cls, path: Path) -> RepositoryRecord | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RepositoryReplaced(
                f"the repository record {path} cannot be read ({exc}): restore it, or run "
                "`ers backup init` to adopt the configured repository"
            ) from None
        return cls(str(data["id"]), str(data.get("recordedAt", "")))

    def write(self, path: Path) -> None:
        """Written under a temporary name and renamed: a reader sees the old or the new one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.{secrets.token_hex(4)}.new")
        with staged.open("w") as handle:
            json.dump({"id": self.id, "recordedAt": self.recorded_at}, handle)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staged, path)

    @classmethod
    def now(cls, repository_id: str) -> RepositoryRecord:
        return cls(repository_id, datetime.now(UTC).isoformat())


def missing(repository: str, record: RepositoryRecord | None) -> RepositoryMissing:
    repository = shown_repository(repository)
    if record is None:
        return RepositoryMissing(
            f"no restic repository at '{repository}', and none is created implicitly: run "
            "`ers backup init` to create it, or fix the repository setting if it lives elsewhere"
        )
    return RepositoryMissing(
        f"the restic repository {record.id[:8]} that held the backups is gone from "
        f"'{repository}': put it back (restore the folder or fix the repository setting); "
        "`ers backup init` starts a new, empty repository instead"
    )


def replaced(repository: str, record: RepositoryRecord, found: str) -> RepositoryReplaced:
    repository = shown_repository(repository)
    return RepositoryReplaced(
        f"the restic repository at '{repository}' is {found[:8]}, not {record.id[:8]} that "
        "held the backups: put the original back (or fix the repository setting); "
        "`ers backup init` adopts the one there now"
    )


class RepositoryIdentity:
    """The id the backups of this process go to; `verify` before writing anything.

    Asking restic costs a repository open (a key derivation, about half a second), too much
    before every backup; for a local repository the bytes of its `config` file, which restic
    writes once at `init`, stand for the id between two thorough checks."""

    def __init__(self, restic: Restic, expected_id: str) -> None:
        self.restic = restic
        self.expected_id = expected_id
        self._config_digest: str | None = None

    @classmethod
    async def first_seen(cls, restic: Restic) -> RepositoryIdentity:
        """The repository there now, for a process given no id to expect."""
        found = await restic.repository_id()
        if found is None:
            raise missing(restic.repository, None)
        return cls(restic, found)

    async def verify(self, *, thorough: bool = False) -> str:
        config_file = self._config_file()
        if config_file is not None and not thorough:
            digest = await asyncio.to_thread(_digest, config_file)
            if digest is None:
                raise missing(self.restic.repository, self._record())
            if digest == self._config_digest:
                return self.expected_id
        found = await self.restic.repository_id()
        if found is None:
            raise missing(self.restic.repository, self._record())
        if found != self.expected_id:
            raise replaced(self.restic.repository, self._record(), found)
        if config_file is not None:
            self._config_digest = await asyncio.to_thread(_digest, config_file)
        return found

    def _record(self) -> RepositoryRecord:
        return RepositoryRecord(self.expected_id, "")

    def _config_file(self) -> Path | None:
        repository = self.restic.repository
        if not is_local(repository) and not repository.startswith("local:"):
            return None
        return Path(repository.removeprefix("local:")) / "config"


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None
