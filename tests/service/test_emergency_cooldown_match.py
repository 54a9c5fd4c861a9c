"""Before an emergency backup within the cooldown, a rollback since its backup ends the
cooldown: one in the repository's list, and one only the audit trail tells of (its record
lost to a kill), whose snapshot would otherwise be given as the state before the incident."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from backup.emergency import EmergencyCooldown
from backup.lineage import RollbackMark
from backup.models import BackupReason, BackupResult
from service.backups.fleet_cooldown import match_cooldown

TAKEN = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def cooling() -> EmergencyCooldown:
    cooldown = EmergencyCooldown(300.0)
    cooldown.started(BackupResult("e1", BackupReason.EMERGENCY, ("budgets",), (), TAKEN, 1.0))
    return cooldown


def manager(*marks: RollbackMark) -> Any:
    async def refresh() -> list[Any]:
        return []

    return SimpleNamespace(refresh=refresh, index=SimpleNamespace(marks=lambda: list(marks)))


async def test_a_rollback_since_the_backup_ends_the_cooldown_wherever_it_is_told() -> None:
    before = RollbackMark(TAKEN - timedelta(minutes=1), "aaaa1111", ("budgets",))
    since = RollbackMark(TAKEN + timedelta(minutes=1), "aaaa1111", ("budgets",))

    kept = cooling()
    await match_cooldown(kept, manager(before), None)
    assert kept.recent() is not None  # no rollback since: it covers the next one

    listed = cooling()
    await match_cooldown(listed, manager(before, since), None)
    assert listed.recent() is None

    told = cooling()
    await match_cooldown(told, manager(before), None, [since])  # the trail's word alone
    assert told.recent() is None
