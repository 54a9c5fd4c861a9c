"""The one seam between `BackupManager` and the kind of state it keeps.

The manager owns what every kind of state shares: the repository and its identity, the lock,
the snapshot list, events, emergency coalescing, retention and the rollback's bookkeeping. A
backend says how its state is copied into restic and put back: a consistent copy of each
component, a restore into scratch that is verified and compared with the live state, and a
rollback that takes a safety snapshot first and swaps the verified state in. There are two:
SQLite files (`backup.files`) and PostgreSQL schemas (`backup.pg`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from backup.errors import UnknownComponent
from backup.events import EventPublisher
from backup.index import SnapshotIndex
from backup.models import BackupResult, RollbackPreview, RollbackResult, Snapshot
from backup.process import ProgressCallback
from backup.restic import Restic

_COMPONENT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

# Writers of the components being rolled back fail fast while this is entered.
PauseWriters = Callable[[], AbstractAsyncContextManager[Any]]
# Called inside the pause once swapped-in files are in place: the stores open them.
Reopen = Callable[[], Awaitable[None] | None]


@dataclass(frozen=True)
class BackupRequest:
    names: Sequence[str]
    reason: str
    full: bool  # the whole state, all or nothing: a full snapshot stands on its own
    timeout: float | None = None
    on_progress: ProgressCallback | None = None
    # False for a backup a person asked for: a snapshot with its reason even if nothing changed
    skip_unchanged: bool = True
    # A rollback's safety snapshot: a file SQLite cannot open (its header overwritten, the
    # very state a rollback is run to replace) is kept byte for byte rather than refused.
    as_found: bool = False


@dataclass(frozen=True)
class RollbackRequest:
    snapshot: Snapshot
    names: Sequence[str]
    reason: str
    pause_writers: PauseWriters
    reopen: Reopen
    on_progress: ProgressCallback | None = None


class BackupBackend(Protocol):
    tag: str  # the restic tag that selects this backend's snapshots
    components: Sequence[str]

    async def start(self) -> None:
        """Clear what an interrupted run (a crash, a kill) left behind."""

    async def take(self, request: BackupRequest) -> BackupResult:
        """Consistent copies of the named components into restic, added to the index."""

    def rollback_components(
        self, snapshot: Snapshot, components: Sequence[str] | None
    ) -> list[str]:
        """What rolling back to `snapshot` restores (None: the backend's whole state);
        RollbackRefused or UnknownComponent when that cannot be."""

    def drill_plan(self, index: SnapshotIndex) -> list[tuple[Snapshot, list[str]]]:
        """The newest snapshots that, restored and verified, prove every component can come
        back; SnapshotNotFound when there is none yet."""

    async def preview(
        self, snapshot: Snapshot, names: Sequence[str], *, rows: bool = True
    ) -> RollbackPreview:
        """Restore into scratch, verify, and (with ``rows``) compare the rows now and in the
        snapshot; nothing live is touched. A restore drill verifies only."""

    async def apply(self, request: RollbackRequest) -> RollbackResult:
        """Safety snapshot, restore, verify, swap in; RollbackFailed(step) leaves the live
        state as it was."""

    async def live_sizes(self) -> dict[str, int]:
        """Bytes of each component's live state; BackupError when it cannot be read."""


class BackendConfig(Protocol):
    """What to back up; builds its backend once the repository is reached."""

    one_component_per_snapshot: bool

    def build(
        self, restic: Restic, index: SnapshotIndex, events: EventPublisher
    ) -> BackupBackend: ...


def check_component_name(name: str) -> None:
    """A component name becomes a restic tag (`component:<name>`) and a file or dump name."""
    if not _COMPONENT_NAME.fullmatch(name):
        raise UnknownComponent(
            f"component name '{name}' must be lowercase letters, digits, '-' or '_'"
        )
