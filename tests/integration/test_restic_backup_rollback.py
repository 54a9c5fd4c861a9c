"""Backups and rollbacks against the real restic binary, each test with its own repository."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup import BackupManager, RollbackFailed, RollbackRefused
from backup.errors import ResticCommandFailed, SnapshotNotFound
from backup.events import BackupSkipped, BackupSucceeded, RollbackFinished
from backup.locks import parse_restic_time
from backup.models import BackupResult
from tests.integration.conftest import rows, write_budgets, write_conversations
from tests.processes import restic_failing_on

pytestmark = pytest.mark.integration


class Writers:
    """Stands in for the service's stores: counts pauses and reopens."""

    def __init__(self) -> None:
        self.paused = 0
        self.reopened = 0

    @contextlib.asynccontextmanager
    async def pause(self) -> AsyncIterator[None]:
        self.paused += 1
        yield

    def reopen(self) -> None:
        self.reopened += 1


async def test_backup_list_details_test_rollback_and_rollback_bring_data_back(
    manager: BackupManager, state_files: dict[str, Path], tmp_path: Path
) -> None:
    password_file = tmp_path / "restic-password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600

    first = await manager.create(None, "manual")
    assert first.snapshot_id and not first.skipped
    assert set(first.components) == set(state_files)
    assert first.summary is not None and first.summary.data_added > 0

    listed = manager.list()
    assert [s.short_id for s in listed] == [first.snapshot_id[:8]]
    assert listed[0].reason == "manual"

    details = await manager.details(first.snapshot_id)
    names = {Path(f.path).name for f in details.files}
    assert {"conversations.sqlite3", "budgets.sqlite3", "incidents.sqlite3"} <= names
    assert details.data_added == first.summary.data_added
    assert details.total_size > 0

    before = rows(state_files["conversations"], "conversations")
    write_conversations(state_files["conversations"], 20, start=50)
    write_budgets(state_files["budgets"], {"food": 9999.0})

    preview = await manager.test_rollback(first.snapshot_id, ["conversations", "budgets"])
    assert preview.ok and preview.snapshot_reason == "manual"
    counts = {
        (c.component, t.table): (t.rows_now, t.rows_in_snapshot)
        for c in preview.components
        for t in c.tables
    }
    assert counts[("conversations", "conversations")] == (70, 50)
    assert counts[("budgets", "budgets")] == (2, 2)
    assert len(rows(state_files["conversations"], "conversations")) == 70  # untouched

    writers = Writers()
    events: list[object] = []
    manager.subscribe(events.append)
    result = await manager.rollback(
        first.snapshot_id, None, "bad deploy", writers.pause, writers.reopen
    )
    assert rows(state_files["conversations"], "conversations") == before
    assert rows(state_files["budgets"], "budgets") == [("food", 400.0), ("gym", 60.0)]
    assert writers.paused == writers.reopened == 1
    assert "incidents" not in result.components
    assert {"safety-snapshot", "restore", "verify", "swap", "reopen"} <= set(result.step_seconds)
    assert not list(state_files["conversations"].parent.glob(".ers-*"))

    safety = manager.index.get(result.safety_snapshot_id)
    assert safety.reason == "pre-rollback"
    await manager.refresh()
    assert manager.index.contains(result.safety_snapshot_id)
    finished = [e for e in events if isinstance(e, RollbackFinished)]
    assert finished and finished[0].ok

    # The safety snapshot holds the state the rollback replaced.
    undo = await manager.test_rollback(result.safety_snapshot_id, ["conversations"])
    assert undo.components[0].tables[0].rows_in_snapshot == 70


async def test_a_new_snapshot_has_its_full_id_and_a_preview_the_time_restic_keeps(
    manager: BackupManager, state_files: dict[str, Path]
) -> None:
    """restic 0.14 names a new snapshot by its short id: the list held it until it was read
    back, where every other list (another replica's) has the full one. And the list holds
    ERS's start time until then, restic a moment later: a preview, like the offline one,
    tells the repository's (before: online and offline previews differed by a second)."""
    made = [await manager.create(None, "manual")]
    write_budgets(state_files["budgets"], {"food": 123.0})
    made.append(await manager.create(["budgets"], "manual"))
    assert all(m.snapshot_id is not None and len(m.snapshot_id) == 64 for m in made), made
    assert {s.id for s in manager.list()} == {m.snapshot_id for m in made}
    kept = {e["id"]: parse_restic_time(e["time"]) for e in await manager.restic.snapshots()}
    assert made[1].snapshot_id is not None
    preview = await manager.test_rollback(made[1].snapshot_id)
    assert preview.snapshot_time == kept[made[1].snapshot_id]


async def test_component_rollback_leaves_other_components_alone(
    manager: BackupManager, state_files: dict[str, Path]
) -> None:
    first = await manager.create(None, "scheduled")
    write_conversations(state_files["conversations"], 5, start=50)
    write_budgets(state_files["budgets"], {"food": 1.0})
    writers = Writers()
    await manager.rollback(first.snapshot_id, ["budgets"], "test", writers.pause, writers.reopen)
    assert rows(state_files["budgets"], "budgets") == [("food", 400.0), ("gym", 60.0)]
    assert len(rows(state_files["conversations"], "conversations")) == 55


async def test_incidents_are_backed_up_but_never_rolled_back(
    manager: BackupManager,
) -> None:
    first = await manager.create(None, "manual")
    assert "incidents" in first.components
    writers = Writers()
    with pytest.raises(RollbackRefused, match="never rolled back"):
        await manager.rollback(first.snapshot_id, ["incidents"], "x", writers.pause, writers.reopen)
    with pytest.raises(RollbackRefused):
        await manager.test_rollback(first.snapshot_id, ["incidents"])
    assert writers.paused == 0


async def test_a_failing_reopen_puts_the_live_files_back(
    manager: BackupManager, state_files: dict[str, Path]
) -> None:
    first = await manager.create(None, "manual")
    write_conversations(state_files["conversations"], 5, start=50)
    current = rows(state_files["conversations"], "conversations")
    calls = []

    def reopen() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("store refused to open")

    with pytest.raises(RollbackFailed) as failure:
        await manager.rollback(first.snapshot_id, ["conversations"], "x", Writers().pause, reopen)
    assert failure.value.step == "reopen"
    assert rows(state_files["conversations"], "conversations") == current
    assert len(calls) == 2  # reopened again on the old files
    assert not [p for p in os.listdir(state_files["conversations"].parent) if ".ers-" in p]


async def test_a_rollback_to_before_a_moment_never_brings_back_what_a_rollback_put_aside(
    manager: BackupManager, state_files: dict[str, Path]
) -> None:
    """A snapshot taken between the one a rollback restored and that rollback holds the
    state the rollback put aside: the newest snapshot before a later moment is the restored
    one, in the list this process kept and in the one read back from restic."""
    good = await manager.create(None, "manual")
    write_conversations(state_files["conversations"], 5, start=50)
    put_aside = await manager.create(None, "emergency")
    writers = Writers()
    done = await manager.rollback(good.snapshot_id, None, "x", writers.pause, writers.reopen)
    [record] = await manager.restic.snapshots(tag="ers-rollback")
    assert f"restores:{good.snapshot_id}" in record["tags"]
    later = datetime.now(UTC) + timedelta(seconds=1)
    for _ in range(2):
        found = manager.newest_snapshot_before(later, ["conversations", "budgets"])
        assert found is not None and found.id == good.snapshot_id, (found, put_aside)
        await manager.refresh()
    # Put back by hand (the undo): the safety snapshot holds the live state again.
    await manager.rollback(done.safety_snapshot_id, None, "undo", writers.pause, writers.reopen)
    undone = manager.newest_snapshot_before(later + timedelta(seconds=5), ["conversations"])
    assert undone is not None and undone.id == done.safety_snapshot_id


async def test_a_failed_rollback_leaves_no_record(
    manager: BackupManager, state_files: dict[str, Path]
) -> None:
    """Nothing was rolled back: the snapshots after the one it would have restored still
    hold the live state's past, and the newest of them is the one to go back to."""
    first = await manager.create(None, "manual")
    write_conversations(state_files["conversations"], 5, start=50)
    second = await manager.create(None, "manual")

    def reopen() -> None:
        raise OSError("store refused to open")

    with pytest.raises(RollbackFailed):
        await manager.rollback(first.snapshot_id, None, "x", Writers().pause, reopen)
    assert await manager.restic.snapshots(tag="ers-rollback") == []
    later = datetime.now(UTC) + timedelta(seconds=1)
    for _ in range(2):  # in the list kept here, and in the one read back
        found = manager.newest_snapshot_before(later, ["conversations"])
        assert found is not None and found.id == second.snapshot_id
        await manager.refresh()


async def test_a_rollback_whose_record_is_not_written_says_so(
    manager: BackupManager, state_files: dict[str, Path], tmp_path: Path
) -> None:
    """The rollback is done either way; its result tells what a missing record means. The
    record is not kept in memory as if written: the service's audit trail stands for it
    until it is written late (``Rollbacks.swaps_recorded``), and its choices pass over what
    the rollback put aside (``test_backups_api``, ``test_rollback_cut_after_swap``)."""
    good = await manager.create(None, "manual")
    before = rows(state_files["conversations"], "conversations")
    write_conversations(state_files["conversations"], 5, start=50)
    await manager.create(None, "emergency")
    manager.restic.binary = str(restic_failing_on(tmp_path, "rollback.json"))
    writers = Writers()
    done = await manager.rollback(good.snapshot_id, None, "x", writers.pause, writers.reopen)
    assert any("record in the repository was not written" in n for n in done.notes), done.notes
    assert rows(state_files["conversations"], "conversations") == before
    assert manager.index.marks() == []


async def test_unchanged_component_is_skipped_and_reported(
    manager: BackupManager, state_files: dict[str, Path]
) -> None:
    events: list[object] = []
    manager.subscribe(events.append)
    await manager.create(["budgets", "conversations"], "scheduled")
    write_conversations(state_files["conversations"], 1, start=50)
    second = await manager.create(["budgets", "conversations"], "scheduled")
    assert second.components == ("conversations",) and second.skipped == ("budgets",)
    third = await manager.create(["budgets"], "scheduled")
    assert third.snapshot_id is None and third.skipped == ("budgets",)
    assert isinstance(events[-1], BackupSkipped)
    assert sum(isinstance(e, BackupSucceeded) for e in events) == 2
    assert len(manager.list()) == 2
    # A full-system backup is all or nothing: every component is in it.
    full = await manager.create(None, "manual")
    assert len(full.components) == 4


async def test_emergency_backups_inside_the_cooldown_are_coalesced(
    manager: BackupManager, state_files: dict[str, Path]
) -> None:
    first = await manager.create(None, "emergency")
    write_conversations(state_files["conversations"], 1, start=50)
    second = await manager.create(None, "emergency")
    assert second.coalesced and second.snapshot_id == first.snapshot_id
    assert len(manager.list()) == 1


async def test_retention_keeps_the_configured_number_and_prune_and_check_pass(
    manager: BackupManager, state_files: dict[str, Path]
) -> None:
    for turn in range(4):
        write_conversations(state_files["conversations"], 1, start=100 + turn)
        await manager.create(["conversations"], "scheduled")
    newest = [s.short_id for s in manager.list()]
    result = await manager.forget(keep_last=2)
    assert len(result.kept) == 2 and len(result.removed) == 2
    assert [s.short_id for s in manager.list()] == newest[:2]
    await manager.prune()
    assert (await manager.check()).ok
    await manager.refresh()
    assert len(manager.list()) == 2


async def test_retention_keeps_the_last_snapshots_of_every_component(
    manager: BackupManager, state_files: dict[str, Path]
) -> None:
    full = await manager.create(None, "manual")
    for turn in range(3):  # one component backed up alone, more often than keep_last
        write_conversations(state_files["conversations"], 1, start=200 + turn)
        await manager.create(["conversations"], "manual")
    alone = [s.id for s in manager.list() if s.components == ("conversations",)]
    result = await manager.forget(keep_last=2)
    # Before: the full snapshot went, and with it every snapshot of the other components.
    assert full.snapshot_id is not None
    assert any(full.snapshot_id.startswith(kept[:8]) for kept in result.kept)
    assert result.removed == (alone[-1],)  # the oldest conversations-only one
    await manager.refresh()
    held = {c for s in manager.list() for c in s.components}
    assert held == set(state_files)
    assert (await manager.verify_latest()).ok  # the drill still has a full snapshot


async def test_drill_newest_before_and_shutdown_backup(
    manager: BackupManager, state_files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    full = await manager.shutdown_backup(timeout=60)
    assert full.reason == "shutdown"
    # Nothing changed since: no snapshot, and the log says so rather than nothing.
    with caplog.at_level(logging.INFO, logger="backup.manager"):
        again = await manager.shutdown_backup(timeout=60)
    assert again.snapshot_id is None
    assert "final backup: nothing changed since the last snapshot; none taken" in caplog.text
    drill = await manager.verify_latest()
    assert drill.ok and {f.component for f in drill.files} == set(state_files)
    assert manager.status().last_verified == drill.verified_at
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert manager.newest_snapshot_before(later).short_id == full.snapshot_id[:8]
    assert manager.newest_snapshot_before(later, ["budgets"]) is not None
    assert manager.newest_snapshot_before(full.started_at - timedelta(seconds=1)) is None
    assert set(manager.status().last_success) == set(state_files)


async def test_a_drill_verifies_without_reading_the_live_state(
    manager: BackupManager, state_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drill restores and verifies; before, it also compared every row with the live
    state (the whole incidents file, which grows for good) and threw the comparison away."""
    await manager.create(None, "manual")

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the drill read the tables")

    monkeypatch.setattr("backup.file_rollback.table_row_counts", no_reading)
    drill = await manager.verify_latest()
    assert drill.ok and {f.component for f in drill.files} == set(state_files)


async def two_snapshots_the_second_forgotten(
    manager: BackupManager, state_files: dict[str, Path]
) -> tuple[BackupResult, BackupResult]:
    """Two snapshots of budgets, food changed to 1.0 between them, the second forgotten
    behind the list's back (restic run by hand)."""
    first = await manager.create(["budgets"], "manual")
    write_budgets(state_files["budgets"], {"food": 1.0})
    second = await manager.create(["budgets"], "manual")
    assert first.snapshot_id and second.snapshot_id
    await manager.restic.forget([second.snapshot_id])
    return first, second


async def test_the_safety_snapshot_is_one_the_repository_holds(
    manager: BackupManager, state_files: dict[str, Path]
) -> None:
    """The state a rollback replaces was said to be in the last snapshot of it when it had
    not changed since, though that snapshot could be gone from the repository (forgotten by
    hand, or by a process whose change the list had not read yet): the undo then named a
    snapshot that did not exist, and the replaced state was in none."""
    first, second = await two_snapshots_the_second_forgotten(manager, state_files)
    writers = Writers()
    result = await manager.rollback(
        first.snapshot_id, ["budgets"], "x", writers.pause, writers.reopen
    )
    await manager.refresh()
    assert manager.index.contains(result.safety_snapshot_id), result.safety_snapshot_id
    assert manager.index.get(result.safety_snapshot_id).reason == "pre-rollback"
    undo = await manager.test_rollback(result.safety_snapshot_id, ["budgets"])
    assert undo.components[0].tables[0].changed == 1  # food at 1.0, as before the rollback


async def test_a_rollback_to_a_snapshot_gone_from_the_repository_is_not_found(
    manager: BackupManager, state_files: dict[str, Path]
) -> None:
    """The list in memory may still hold a snapshot forgotten behind its back (restic run by
    hand): the rollback failed at its restore with a 503 (exit 5), and so did every retry,
    where a test rollback of it, which reads the list afresh, said it does not exist (404)."""
    _, gone = await two_snapshots_the_second_forgotten(manager, state_files)
    writers = Writers()

    async def unreadable() -> None:
        raise ResticCommandFailed("repository is already locked")

    with pytest.MonkeyPatch.context() as patch:  # the list cannot be read again: still 404
        patch.setattr(manager, "refresh", unreadable)
        with pytest.raises(SnapshotNotFound, match="is gone from the repository"):
            await manager.rollback(
                gone.snapshot_id, ["budgets"], "x", writers.pause, writers.reopen
            )
    writers.paused = 0
    for said in ("is gone from the repository", "no ERS snapshot"):  # and its retry
        with pytest.raises(SnapshotNotFound, match=said):
            await manager.rollback(
                gone.snapshot_id, ["budgets"], "x", writers.pause, writers.reopen
            )
    assert writers.paused == 1  # the retry pauses nothing: the list knows
    assert rows(state_files["budgets"], "budgets") == [("food", 1.0), ("gym", 60.0)]


async def test_a_snapshot_without_a_components_file_is_refused_with_nothing_changed(
    manager: BackupManager, state_files: dict[str, Path], tmp_path: Path
) -> None:
    """Tagged as a budgets snapshot by hand, holding no /budgets.sqlite3: the test rollback
    and the rollback refuse it in the same words, and the rollback counts as none. Before:
    the test rollback reported a copy failing its check, and the rollback failed at its
    verify step on "[Errno 2] No such file or directory" (a 503 and an incident)."""
    notes = tmp_path / "hand-made" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("not a component\n")
    env = {
        **os.environ,
        "RESTIC_REPOSITORY": manager.restic.repository,
        "RESTIC_PASSWORD_FILE": str(tmp_path / "restic-password"),
    }
    tags = ["--tag", "ers", "--tag", "component:budgets", "--tag", "reason:manual"]
    subprocess.run(
        ["restic", "backup", "--json", *tags, "notes.txt"],
        cwd=notes.parent,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    await manager.refresh()
    [hand_made] = manager.list()
    events: list[object] = []
    manager.subscribe(events.append)
    writers = Writers()
    with pytest.raises(RollbackRefused) as tested:
        await manager.test_rollback(hand_made.id)
    with pytest.raises(RollbackRefused) as refused:
        await manager.rollback(hand_made.id, None, "x", writers.pause, writers.reopen)
    expected = f"snapshot {hand_made.short_id} holds no /budgets.sqlite3: pick another"
    assert str(tested.value) == str(refused.value) == expected
    assert not [e for e in events if isinstance(e, RollbackFinished)]  # no failed rollback
    assert rows(state_files["budgets"], "budgets") == [("food", 400.0), ("gym", 60.0)]
