"""The schedule's retention runs after a backup that made a snapshot, not on every tick:
`restic forget` takes the repository for itself and turns away the restores of test
rollbacks people ask for meanwhile."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from service.backups.jobs import DRILL_RETRY_S, _due_backups, drill_due


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


def drilled(last_drill_at: float | None, ok: bool | None, last_full: float) -> Any:
    return SimpleNamespace(
        settings=SimpleNamespace(restore_drill_interval_minutes=360),
        last_drill_at=last_drill_at,
        last_drill_ok=ok,
        last_full=lambda: last_full,
    )


def test_a_failed_drill_runs_again_after_a_newer_full_snapshot_or_its_retry_time() -> None:
    now = 1_000_000.0
    assert drill_due(drilled(None, None, now - 60), now)  # none yet
    assert drill_due(drilled(now - 6 * 3600, True, now), now)  # its schedule
    # Passed: a newer snapshot does not bring the next one forward.
    assert not drill_due(drilled(now - 60, True, now - 30), now)
    # Failed: again once the fix's full snapshot is in, or after DRILL_RETRY_S at most.
    assert not drill_due(drilled(now - 60, False, now - 120), now)
    assert drill_due(drilled(now - 60, False, now - 30), now)
    assert not drill_due(drilled(now - DRILL_RETRY_S + 1, False, now - 7200), now)
    assert drill_due(drilled(now - DRILL_RETRY_S, False, now - 7200), now)


def test_a_failed_drill_names_the_snapshot_each_failing_component_came_from() -> None:
    """With PostgreSQL each component is restored from its own snapshot: the problem named
    the newest of them, a budgets snapshot, for a conversations failure."""
    from datetime import UTC, datetime

    from backup.models import DrillResult, FileVerification
    from service.backups.jobs import drill_problem

    files = (
        FileVerification("budgets", "ok", True, 10),
        FileVerification("conversations", "pg_restore failed", None, 0),
        FileVerification("profiles", "pg_restore failed", None, 0),
    )
    per_component = {"budgets": "b9c0a844" * 8, "conversations": "c0ffee00" * 8}
    per_component["profiles"] = "d00dfeed" * 8
    result = DrillResult(per_component["budgets"], datetime.now(UTC), 1.0, files, per_component)
    assert drill_problem(result) == (
        "conversations (snapshot c0ffee00), profiles (snapshot d00dfeed): pg_restore failed"
    )
    one = DrillResult("aaaabbbb" * 8, datetime.now(UTC), 1.0, files[:2])  # SQLite: one snapshot
    assert drill_problem(one) == "snapshot aaaabbbb: conversations: pg_restore failed"
    failing_one = {**per_component, "profiles": per_component["conversations"]}
    assert drill_problem(DrillResult("x" * 64, datetime.now(UTC), 1.0, files, failing_one)) == (
        "snapshot c0ffee00: conversations, profiles: pg_restore failed"
    )
