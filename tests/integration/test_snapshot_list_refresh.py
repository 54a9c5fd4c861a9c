"""The snapshot list read again from restic keeps a backup this process made while restic
was listing: the list restic printed was read before the backup was written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backup import BackupManager
from tests.integration.conftest import write_budgets

pytestmark = pytest.mark.integration


async def test_a_backup_made_while_the_list_is_read_stays_in_it(
    manager: BackupManager, state_files: dict[str, Path]
) -> None:
    first = await manager.create(None, "manual")
    write_budgets(state_files["budgets"], {"rent": 900.0})
    listing = manager.restic.snapshots
    made: list[str] = []

    async def backup_during_the_read(**options: Any) -> list[dict[str, Any]]:
        entries = await listing(**options)  # restic has printed its list...
        manager.restic.snapshots = listing  # type: ignore[method-assign]
        made.append((await manager.create(None, "manual")).snapshot_id)  # ...then this ends
        return entries

    manager.restic.snapshots = backup_during_the_read  # type: ignore[method-assign]
    shown = [s.id for s in await manager.refresh()]
    assert made and made[0] not in [first.snapshot_id]
    assert [i for i in shown if i.startswith(made[0])] == [shown[0]]  # the newest, once
    assert any(i.startswith(first.snapshot_id) for i in shown)

    # The next read lists it itself: still once, by its whole id.
    again = [s.id for s in await manager.refresh()]
    assert len(again) == 2 and again[0].startswith(made[0]) and len(again[0]) == 64


async def test_a_snapshot_forgotten_elsewhere_leaves_the_list_at_the_next_read(
    manager: BackupManager, state_files: dict[str, Path]
) -> None:
    kept = await manager.create(None, "manual")
    write_budgets(state_files["budgets"], {"rent": 900.0})
    gone = await manager.create(None, "manual")
    await manager.restic.forget([gone.snapshot_id])  # as another process would
    shown = [s.id for s in await manager.refresh()]
    assert len(shown) == 1 and shown[0].startswith(kept.snapshot_id)


async def test_a_stale_read_neither_drops_a_backup_nor_brings_back_a_forgotten_snapshot(
    manager: BackupManager, state_files: dict[str, Path]
) -> None:
    """Reads end in any order: a refresh slower than a newer one, or than the retention's
    forget, ended with its own list. Before, it dropped the backup the newer read had shown,
    and put back the snapshot the forget had removed, until the next read."""
    old = await manager.create(None, "manual")
    write_budgets(state_files["budgets"], {"rent": 900.0})
    kept = await manager.create(None, "manual")
    listing = manager.restic.snapshots
    made: list[str] = []

    async def newer_work_during_the_read(**options: Any) -> list[dict[str, Any]]:
        entries = await listing(**options)  # lists both snapshots
        manager.restic.snapshots = listing  # type: ignore[method-assign]
        write_budgets(state_files["budgets"], {"gym": 60.0})
        made.append((await manager.create(None, "manual")).snapshot_id)
        await manager.refresh()  # a newer read, which shows it
        assert (await manager.forget(keep_last=2)).removed  # the oldest goes
        return entries

    manager.restic.snapshots = newer_work_during_the_read  # type: ignore[method-assign]
    shown = [s.id for s in await manager.refresh()]
    assert len(shown) == 2, shown
    assert shown[0].startswith(made[0]) and shown[1].startswith(kept.snapshot_id), shown
    assert not any(i.startswith(old.snapshot_id) for i in shown)
