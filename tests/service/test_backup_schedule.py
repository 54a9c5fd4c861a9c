"""The schedule's retention runs after a backup that made a snapshot, not on every tick:
`restic forget` takes the repository for itself and turns away the restores of test
rollbacks people ask for meanwhile."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from service.backups.jobs import _due_backups


class Backups:
    """The little of BackupService the schedule reads, with what it was asked to do."""

    def __init__(self, last: float, snapshot_id: str | None) -> None:
        self.calls: list[Any] = []
        self._last, self._snapshot_id = last, snapshot_id
        self.intervals_s = {"budgets": 3600.0}
        self.full_interval_s = 86400.0
        self.settings = SimpleNamespace(max_backups=50)

    def last_success(self) -> dict[str, float]:
        return {"budgets": self._last}

    def last_full(self) -> float:
        return self._last

    async def create(self, components: list[str] | None, reason: str) -> Any:
        self.calls.append(("create", components))
        return SimpleNamespace(snapshot_id=self._snapshot_id)

    def require(self) -> Any:
        async def forget(keep_last: int) -> None:
            self.calls.append(("forget", keep_last))

        return SimpleNamespace(forget=forget)


async def test_a_tick_with_nothing_due_runs_no_restic_forget() -> None:
    backups = Backups(last=time.time(), snapshot_id="abc")
    assert await _due_backups(backups) is False  # type: ignore[arg-type]
    assert backups.calls == []


async def test_a_due_backup_of_unchanged_state_runs_no_restic_forget() -> None:
    backups = Backups(last=time.time() - 7200, snapshot_id=None)
    assert await _due_backups(backups) is False  # type: ignore[arg-type]
    assert backups.calls == [("create", ["budgets"])]


async def test_a_backup_that_made_a_snapshot_is_followed_by_retention() -> None:
    backups = Backups(last=time.time() - 7200, snapshot_id="abc")
    assert await _due_backups(backups) is True  # type: ignore[arg-type]
    assert backups.calls == [("create", ["budgets"]), ("forget", 50)]
