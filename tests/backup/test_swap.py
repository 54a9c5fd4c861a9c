"""Swapping restored files in: whole files only, write-ahead logs folded first, undo on failure."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from backup import swap
from backup.discard import settle
from backup.errors import BackupError

IDS = {"snapshot_id": "5a5a5a5a", "safety_snapshot_id": "0f0f0f0f"}


def database(path: Path, values: list[int], keep_open: bool = False) -> sqlite3.Connection | None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE IF NOT EXISTS t (v INTEGER)")
    db.executemany("INSERT INTO t VALUES (?)", [(v,) for v in values])
    db.commit()
    if keep_open:
        return db
    db.close()
    return None


def values(path: Path) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT v FROM t ORDER BY v")]
    finally:
        db.close()


def test_restored_file_replaces_the_live_one_and_stale_logs_go(tmp_path: Path) -> None:
    live, restored = tmp_path / "live.sqlite3", tmp_path / "restored.sqlite3"
    database(live, [1, 2, 3])
    database(restored, [9])
    Path(f"{live}-shm").write_bytes(b"\0" * 100)
    done = swap.swap_in([(restored, live)], **IDS)
    swap.commit_soon(done)
    settle(timeout=10)
    assert values(live) == [9]
    assert not Path(f"{live}-wal").exists() and not Path(f"{live}-shm").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.sqlite3"]


def test_commit_soon_removes_the_old_names_in_the_background(tmp_path: Path) -> None:
    live, restored = tmp_path / "live.sqlite3", tmp_path / "restored.sqlite3"
    database(live, [1])
    database(restored, [2])
    done = swap.swap_in([(restored, live)], **IDS)
    assert done.olds[0].exists()
    swap.commit_soon(done)
    for _ in range(200):
        if not done.olds[0].exists():
            break
        time.sleep(0.01)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.sqlite3"]
    assert values(live) == [2]


def test_a_failure_on_the_second_file_puts_the_first_back(tmp_path: Path) -> None:
    first, second = tmp_path / "a.sqlite3", tmp_path / "b.sqlite3"
    database(first, [1])
    database(second, [2])
    new_first = tmp_path / "new-a"
    database(new_first, [10])
    with pytest.raises(FileNotFoundError):
        swap.swap_in([(new_first, first), (tmp_path / "missing", second)], **IDS)
    assert values(first) == [1] and values(second) == [2]
    assert not list(tmp_path.glob("*.ers-old-*"))


def test_undo_after_a_swap_restores_the_old_content(tmp_path: Path) -> None:
    live, restored = tmp_path / "live.sqlite3", tmp_path / "restored.sqlite3"
    database(live, [1, 2])
    database(restored, [7])
    done = swap.swap_in([(restored, live)], **IDS)
    swap.undo(done)
    assert values(live) == [1, 2]


def test_a_writer_that_was_not_paused_stops_the_swap(tmp_path: Path) -> None:
    live, restored = tmp_path / "live.sqlite3", tmp_path / "restored.sqlite3"
    writer = database(live, [1], keep_open=True)
    assert writer is not None
    writer.execute("BEGIN")
    writer.execute("SELECT * FROM t").fetchall()  # holds a read snapshot of the log
    database(restored, [5])
    with pytest.raises(swap.WritersStillActive):
        swap.swap_in([(restored, live)], **IDS)
    writer.rollback()
    writer.close()
    assert values(live) == [1]


def test_a_file_sqlite_cannot_read_has_nothing_to_fold_unless_a_log_beside_it_holds_some(
    tmp_path: Path,
) -> None:
    """The damaged file a rollback replaces: an empty -wal (a stop that left it) is no log;
    one with content is named, since the restored file must not get its pages."""
    live = tmp_path / "budgets.sqlite3"
    live.write_bytes(b"not a database, overwritten" * 200)
    wal = tmp_path / "budgets.sqlite3-wal"
    wal.write_bytes(b"")
    swap.fold_wal_into(live)
    wal.write_bytes(b"log pages")
    with pytest.raises(BackupError, match=f"and {wal} beside it holds its log: move them away"):
        swap.fold_wal_into(live)
