"""Events the backup manager publishes; metrics, logs and the audit trail subscribe to them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from backup.models import BackupResult, DrillResult, RollbackResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackupSucceeded:
    result: BackupResult


@dataclass(frozen=True)
class BackupSkipped:
    """Nothing requested had changed since its last snapshot; no snapshot was made."""

    result: BackupResult


@dataclass(frozen=True)
class BackupFailed:
    components: tuple[str, ...]
    reason: str
    error_label: str  # short and stable: "locked", "wrong_password", "timeout", ...
    message: str
    duration_seconds: float


@dataclass(frozen=True)
class RepositoryInitialised:
    """`ers backup init` made `repository_id` the repository the backups go to."""

    repository_id: str
    created: bool


@dataclass(frozen=True)
class RollbackStepStarted:
    snapshot_id: str
    step: str


@dataclass(frozen=True)
class RollbackFinished:
    """Emitted once per rollback; `result` is None when it failed."""

    snapshot_id: str
    components: tuple[str, ...]
    duration_seconds: float
    result: RollbackResult | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None


@dataclass(frozen=True)
class DrillFinished:
    result: DrillResult


@dataclass(frozen=True)
class SnapshotsForgotten:
    """Retention dropped these snapshots from the repository."""

    snapshot_ids: tuple[str, ...]


BackupEvent = (
    BackupSucceeded
    | BackupSkipped
    | BackupFailed
    | RollbackStepStarted
    | RollbackFinished
    | DrillFinished
    | SnapshotsForgotten
)
Listener = Callable[[BackupEvent], None]


class EventPublisher:
    """Calls every subscribed listener in order; a failing listener never breaks a backup."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add `listener`; the returned function removes it again."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def publish(self, event: BackupEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("backup event listener failed on %s", type(event).__name__)
