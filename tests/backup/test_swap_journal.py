"""A swap of several files killed at any point: start-up's recovery makes the live state all
the old files (journal still there) or all the new ones (journal already removed), never a
mix, and nothing that could repair it is deleted while a journal is unresolved."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from backup import swap, swap_journal
from backup.files import BackupConfig, SqliteFiles
from backup.index import SnapshotIndex
from backup.swap_journal import JOURNAL_NAME, SwapJournal, SwapRecoveryFailed
from backup.workspace import Workspace
from tests.backup.test_swap import database, values

IDS = {"snapshot_id": "5a5a5a5a5a5a", "safety_snapshot_id": "0f0f0f0f0f0f"}
NAMES = ("conversations", "budgets", "profiles")


def three_components(folder: Path, new_only: str | None = None) -> list[tuple[Path, Path]]:
    """Live files holding [n] and restored ones holding [n * 100]; `new_only` has no live
    file before the swap."""
    data, scratch = folder / "data", folder / "data" / ".ers-rollback-x"
    scratch.mkdir(parents=True)
    pairs = []
    for n, name in enumerate(NAMES, start=1):
        live, restored = data / f"{name}.sqlite3", scratch / f"{name}.sqlite3"
        if name != new_only:
            database(live, [n])
        database(restored, [n * 100])
        pairs.append((restored, live))
    return pairs


def killed_swap(pairs: list[tuple[Path, Path]], renames: int, between: bool = False) -> None:
    """Run swap_in in a child process that SIGKILLs itself after `renames` files were
    renamed in (with `between`, once the next file's second name exists but before its
    rename)."""

    def child() -> None:
        done = 0
        rename_in = swap._rename_in
        replace = os.replace

        def replace_then_maybe_die(src: object, dst: object) -> None:
            if between and done == renames:
                os.kill(os.getpid(), signal.SIGKILL)
            replace(src, dst)  # type: ignore[arg-type]

        def counting(entry: swap_journal.JournalEntry) -> None:
            nonlocal done
            if done == renames and not between:
                os.kill(os.getpid(), signal.SIGKILL)
            rename_in(entry)
            done += 1

        swap._rename_in = counting  # type: ignore[assignment]
        os.replace = replace_then_maybe_die  # type: ignore[assignment]
        swap.swap_in(pairs, **IDS)
        os.kill(os.getpid(), signal.SIGKILL)  # after every rename, before the commit

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(timeout=30)
    assert process.exitcode == -signal.SIGKILL


def live_values(pairs: list[tuple[Path, Path]]) -> list[list[int] | None]:
    return [values(live) if live.exists() else None for _, live in pairs]


@pytest.mark.parametrize("renames", [0, 1, 2, 3])
def test_a_swap_killed_after_any_number_of_renames_is_undone_whole(
    tmp_path: Path, renames: int, caplog: pytest.LogCaptureFixture
) -> None:
    pairs = three_components(tmp_path)
    killed_swap(pairs, renames)
    data = tmp_path / "data"
    assert (data / JOURNAL_NAME).exists()
    if 0 < renames < 3:
        mixed = live_values(pairs)
        assert [100] in mixed and [3] in mixed  # what the kill left: half rolled back

    with caplog.at_level(logging.WARNING, logger="backup.swap_journal"):
        [undone] = swap_journal.recover([data])

    assert live_values(pairs) == [[1], [2], [3]]
    assert len(undone.put_back) == renames
    assert not (data / JOURNAL_NAME).exists()
    assert not list(data.glob("*.ers-old-*"))
    [line] = [r.getMessage() for r in caplog.records]
    assert "safety snapshot 0f0f0f0f" in line and "snapshot 5a5a5a5a" in line
    assert ("put back conversations.sqlite3" in line) == (renames > 0)


def test_a_kill_between_the_second_name_and_the_rename_is_undone(tmp_path: Path) -> None:
    pairs = three_components(tmp_path)
    killed_swap(pairs, renames=1, between=True)
    data = tmp_path / "data"
    assert len(list(data.glob("*.ers-old-*"))) == 2  # the first file's and the second's

    [undone] = swap_journal.recover([data])

    assert live_values(pairs) == [[1], [2], [3]]
    assert undone.put_back == ("conversations.sqlite3",)
    assert not list(data.glob("*.ers-old-*"))


def test_a_file_that_did_not_exist_before_the_swap_is_removed_again(tmp_path: Path) -> None:
    pairs = three_components(tmp_path, new_only="budgets")
    killed_swap(pairs, renames=3)

    [undone] = swap_journal.recover([tmp_path / "data"])

    assert live_values(pairs) == [[1], None, [3]]
    assert undone.removed == ("budgets.sqlite3",)


def test_a_swap_committed_before_the_kill_stays_and_its_old_files_go(tmp_path: Path) -> None:
    pairs = three_components(tmp_path)
    done = swap.swap_in(pairs, **IDS)
    done.journal.remove()  # committed; the kill came before the old names were deleted
    data = tmp_path / "data"

    assert swap_journal.recover([data]) == []
    Workspace(tmp_path / "work").remove_leftovers([live for _, live in pairs])

    assert live_values(pairs) == [[100], [200], [300]]
    assert sorted(p.name for p in data.iterdir()) == sorted(f"{n}.sqlite3" for n in NAMES)


def test_leftovers_of_a_journal_that_cannot_be_undone_are_kept(tmp_path: Path) -> None:
    pairs = three_components(tmp_path)
    killed_swap(pairs, renames=1)
    data = tmp_path / "data"
    (data / JOURNAL_NAME).write_text("{not json")

    with pytest.raises(SwapRecoveryFailed, match="cannot be read"):
        swap_journal.recover([data])
    Workspace(tmp_path / "work").remove_leftovers([live for _, live in pairs])

    assert (data / JOURNAL_NAME).exists()
    [old] = data.glob("conversations.sqlite3.ers-old-*")
    assert values(old) == [1]
    assert (data / ".ers-rollback-x").is_dir()


def test_the_copies_a_killed_backup_staged_are_cleared_and_the_folder_kept(
    tmp_path: Path,
) -> None:
    """Before: a backup killed while restic read its staged copies left them, as large as
    the state, until the next backup."""
    pairs = three_components(tmp_path)
    staging = Workspace(tmp_path / "work").staging_dir()
    for name in NAMES:
        (staging / f"{name}.sqlite3").write_bytes(b"x" * 4096)
    (staging / "ers-manifest.json").write_text("{}")

    Workspace(tmp_path / "work").remove_leftovers([live for _, live in pairs])

    assert staging.is_dir() and list(staging.iterdir()) == []
    assert live_values(pairs) == [[1], [2], [3]]


def test_a_new_swap_is_refused_while_an_interrupted_one_is_unresolved(tmp_path: Path) -> None:
    pairs = three_components(tmp_path)
    killed_swap(pairs, renames=1)

    with pytest.raises(SwapRecoveryFailed, match="interrupted swap"):
        swap.swap_in(pairs[1:], **IDS)

    journal = SwapJournal.read(tmp_path / "data" / JOURNAL_NAME)
    assert [e.live for e in journal.entries] == [live for _, live in pairs]
    assert journal.safety_snapshot_id == IDS["safety_snapshot_id"]


def test_start_of_the_files_backend_undoes_before_clearing_leftovers(tmp_path: Path) -> None:
    pairs = three_components(tmp_path)
    killed_swap(pairs, renames=2)
    config = BackupConfig(
        components={name: live for name, (_, live) in zip(NAMES, pairs, strict=True)},
        work_dir=tmp_path / "work",
    )
    backend = SqliteFiles(None, config, SnapshotIndex(), None)  # type: ignore[arg-type]

    asyncio.run(backend.start())

    assert live_values(pairs) == [[1], [2], [3]]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(
        f"{n}.sqlite3" for n in NAMES
    )


def test_a_journal_killed_while_being_written_changed_nothing_and_is_cleared(
    tmp_path: Path,
) -> None:
    pairs = three_components(tmp_path)
    data = tmp_path / "data"
    (data / f"{JOURNAL_NAME}.draft").write_text('{"format": 1, "fil')

    assert swap_journal.recover([data]) == []
    Workspace(tmp_path / "work").remove_leftovers([live for _, live in pairs])

    assert live_values(pairs) == [[1], [2], [3]]
    assert sorted(p.name for p in data.iterdir()) == sorted(f"{n}.sqlite3" for n in NAMES)
