"""restic started before the copies are made, held at a gate: against the real restic binary.

The gate must never let restic read a half-staged folder, and a run that turns out to be
unneeded, started with the wrong tags, ready too early or orphaned must end without a snapshot
or a lock left behind.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from backup import BackupManager
from backup.errors import StagingFailed
from backup.snapshotter import EARLY_PAUSE_AFTER_A_MISS
from tests.integration.conftest import write_budgets, write_conversations

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class BackupCalls:
    """Wraps the manager's `restic.backup`: whether each run was gated, and its tags."""

    def __init__(self, manager: BackupManager) -> None:
        self.calls: list[tuple[bool, tuple[str, ...]]] = []
        self._backup = manager.restic.backup
        manager.restic.backup = self  # type: ignore[method-assign]

    async def __call__(self, targets: list[str], **options: Any) -> dict[str, Any]:
        self.calls.append((options.get("gate") is not None, tuple(options["tags"])))
        return await self._backup(targets, **options)


def touch(path: Path) -> None:
    """New times, same content: the live file looks changed but is not."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns + 5_000_000_000, stat.st_mtime_ns + 5_000_000_000))


async def no_locks_and_snapshots(manager: BackupManager) -> int:
    assert await manager.restic.list_lock_ids() == []
    return len(await manager.refresh())


async def test_changed_state_goes_through_the_gate_and_restores_with_matching_checksums(
    manager: BackupManager, state_files: dict[str, Path]
) -> None:
    spy = BackupCalls(manager)
    first = await manager.create(None, "manual")
    write_conversations(state_files["conversations"], 5, start=50)
    second = await manager.create(None, "manual")
    assert [gated for gated, _ in spy.calls] == [True, True]
    assert set(second.components) == set(state_files)
    assert first.snapshot_id != second.snapshot_id
    drill = await manager.verify_latest()  # the manifest's checksums match every file
    assert drill.ok and all(f.checksum_matches for f in drill.files)
    preview = await manager.test_rollback(second.snapshot_id, ["conversations"])
    assert preview.components[0].tables[0].rows_in_snapshot == 55
    assert await no_locks_and_snapshots(manager) == 2


async def test_a_wrong_guess_stops_the_early_run_and_backs_up_with_the_right_tags(
    manager: BackupManager, state_files: dict[str, Path]
) -> None:
    await manager.create(["budgets", "profiles"], "scheduled")
    spy = BackupCalls(manager)
    touch(state_files["profiles"])
    write_budgets(state_files["budgets"], {"food": 1.0})
    result = await manager.create(["budgets", "profiles"], "scheduled")
    assert result.components == ("budgets",) and result.skipped == ("profiles",)
    gated, tags = spy.calls[0]
    assert gated and "component:profiles" in tags  # the guess, stopped at the gate
    assert spy.calls[1] == (False, ("ers", "component:budgets", "reason:scheduled"))
    assert await no_locks_and_snapshots(manager) == 2
    assert manager.index.get(result.snapshot_id).components == ("budgets",)


async def test_a_touched_but_unchanged_state_is_skipped_and_restic_stopped(
    manager: BackupManager, state_files: dict[str, Path]
) -> None:
    first = await manager.create(None, "manual")
    spy = BackupCalls(manager)
    for path in state_files.values():
        touch(path)
    again = await manager.create(None, "manual")
    assert again.snapshot_id is None and again.reused_snapshot_id == first.snapshot_id
    assert spy.calls and spy.calls[0][0]  # started early, then stopped at the gate
    assert await no_locks_and_snapshots(manager) == 1
    # Once a copy has matched its snapshot, the same look needs no restic start at all.
    spy.calls.clear()
    assert (await manager.create(None, "manual")).snapshot_id is None
    assert spy.calls == []


async def test_a_failed_copy_stops_the_early_run_before_it_reads(
    manager: BackupManager, state_files: dict[str, Path]
) -> None:
    await manager.create(None, "manual")
    state_files["budgets"].write_bytes(b"not a database" * 100)
    with pytest.raises(StagingFailed, match="readable SQLite"):
        await manager.create(None, "manual")
    assert await no_locks_and_snapshots(manager) == 1
    assert not list((manager.backend.workspace.root / "staging").iterdir())


async def test_restic_ready_before_the_copies_fails_at_the_gate_and_is_run_again(
    manager: BackupManager, state_files: dict[str, Path]
) -> None:
    spy = BackupCalls(manager)
    copy = manager.backend.snapshotter._stage

    async def slow_copies(names: list[str], staging: Path, **options: Any) -> Any:
        await asyncio.sleep(3.0)  # restic gets ready in under a second
        return await copy(names, staging, **options)

    manager.backend.snapshotter._stage = slow_copies  # type: ignore[method-assign]
    result = await manager.create(None, "manual")
    assert [gated for gated, _ in spy.calls] == [True, False]
    assert set(result.components) == set(state_files)
    assert manager.backend.snapshotter._early_starts_paused == EARLY_PAUSE_AFTER_A_MISS
    assert (await manager.verify_latest()).ok
    assert await no_locks_and_snapshots(manager) == 1


CHILD = """
import asyncio, sys
from pathlib import Path
from backup import BackupConfig, BackupManager, RepositoryConfig

async def main():
    root = Path(sys.argv[1])
    manager = await BackupManager.open(
        RepositoryConfig(str(root / "repo"), root / "restic-password",
                         cache_dir=root / "restic-cache"),
        BackupConfig({p.stem: p for p in (root / "data").glob("*.sqlite3")}, root / "work"),
    )

    async def copies_that_never_finish(names, staging, **options):
        print("copying", flush=True)
        await asyncio.sleep(600)

    manager.backend.snapshotter._stage = copies_that_never_finish
    await manager.create(None, "manual")

asyncio.run(main())
"""


async def restic_children(pid: int) -> list[psutil.Process]:
    """restic as started by `pid`, waited for: it is spawned once the copies have begun."""
    for _ in range(100):
        found = [p for p in psutil.Process(pid).children() if p.name() == "restic"]
        if found:
            return found
        await asyncio.sleep(0.05)
    return []


async def test_restic_outlives_a_killed_service_only_to_fail_at_the_gate(
    manager: BackupManager, tmp_path: Path
) -> None:
    """kill -9 of the service alone (not its process group) while restic waits at the gate."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "copying"
        restics = await restic_children(child.pid)
        assert restics, "restic should have been started beside the copies"
        child.kill()
        child.wait(timeout=10)
        _, alive = psutil.wait_procs(restics, timeout=20)
        assert not alive, "an orphaned restic must not wait at the gate for ever"
    finally:
        child.kill()
        child.wait(timeout=10)
    assert await no_locks_and_snapshots(manager) == 0
