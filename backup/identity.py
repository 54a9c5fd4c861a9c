"""Which restic repository the backups of a data directory go to, remembered by its id.

A repository that disappears (a moved folder, an emptied bucket) must not be replaced by a
new, empty one without anyone noticing: every snapshot would look lost while backups go on
"succeeding". So the id restic gives a repository (`restic cat config`) is written to a small
record file in the data directory when the repository is created or first opened, and each
open, backup and health check compares the repository it reaches with that id.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backup.errors import RepositoryMissing, RepositoryReplaced
from backup.restic import Restic

RECORD_FILE_NAME = "restic-repository.json"


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
    if record is None:
        return RepositoryMissing(
            f"no restic repository at '{repository}' and the data directory already holds "
            "state: nothing creates a repository on its own here; if this is meant to be a new "
            "repository run `ers backup init`, else fix the repository setting"
        )
    return RepositoryMissing(
        f"the restic repository {record.id[:8]} that held the backups is gone from "
        f"'{repository}': put it back (restore the folder or fix the repository setting); "
        "`ers backup init` starts a new, empty repository instead"
    )


def replaced(repository: str, record: RepositoryRecord, found: str) -> RepositoryReplaced:
    return RepositoryReplaced(
        f"the restic repository at '{repository}' is {found[:8]}, not {record.id[:8]} that "
        "held the backups: put the original back (or fix the repository setting); "
        "`ers backup init` adopts the one there now"
    )


class RepositoryIdentity:
    """The id the backups of this process go to; `verify` before writing anything."""

    def __init__(self, restic: Restic, expected_id: str) -> None:
        self.restic = restic
        self.expected_id = expected_id

    async def verify(self) -> str:
        found = await self.restic.repository_id()
        record = RepositoryRecord(self.expected_id, "")
        if found is None:
            raise missing(self.restic.repository, record)
        if found != self.expected_id:
            raise replaced(self.restic.repository, record, found)
        return found
