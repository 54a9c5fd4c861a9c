"""Consistent copies of SQLite files, their checks, and the folder they are staged in."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from backup.errors import StagingFailed
from backup.events import EventPublisher
from backup.files import BackupConfig
from backup.index import SnapshotIndex
from backup.staging import (
    clear_folder,
    file_sha256,
    integrity_of,
    live_signature,
    not_a_database,
    read_manifest,
    stage_component,
    table_row_counts,
    verify_restored,
    write_manifest,
)


def live_database(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE conversations (id INTEGER PRIMARY KEY, user_id TEXT, role TEXT, "
        "text TEXT, created_at REAL)"
    )
    db.execute("CREATE TABLE budgets (category TEXT PRIMARY KEY, amount REAL)")
    db.executemany(
        "INSERT INTO conversations (user_id, role, text, created_at) VALUES (?, ?, ?, ?)",
        [(f"u{i % 3}", "user", f"hello {i}", float(i)) for i in range(100)],
    )
    db.execute("INSERT INTO budgets VALUES ('food', 400)")
    db.commit()
    return db


def test_copy_holds_committed_rows_still_in_the_wal_and_not_uncommitted_ones(
    tmp_path: Path,
) -> None:
    db = live_database(tmp_path / "live.sqlite3")
    assert Path(f"{tmp_path / 'live.sqlite3'}-wal").stat().st_size > 0
    db.execute("INSERT INTO budgets VALUES ('gym', 60)")  # open transaction, not committed
    staging = tmp_path / "staging"
    staging.mkdir()
    staged = stage_component("conversations", tmp_path / "live.sqlite3", staging)
    db.rollback()
    db.close()
    assert staged.path == staging / "conversations.sqlite3"
    assert integrity_of(staged.path) == "ok"
    assert table_row_counts(staged.path, live=False) == {"budgets": 1, "conversations": 100}
    assert staged.sha256 == file_sha256(staged.path)
    assert not Path(f"{staged.path}-wal").exists()


def test_unchanged_data_gives_the_same_hash(tmp_path: Path) -> None:
    live_database(tmp_path / "live.sqlite3").close()
    first = stage_component("c", tmp_path / "live.sqlite3", tmp_path)
    second = stage_component("c", tmp_path / "live.sqlite3", tmp_path)
    assert first.sha256 == second.sha256


def test_missing_or_broken_source_is_a_named_failure(tmp_path: Path) -> None:
    with pytest.raises(StagingFailed, match="does not exist"):
        stage_component("c", tmp_path / "absent.sqlite3", tmp_path)
    (tmp_path / "junk.sqlite3").write_bytes(b"not a database" * 100)
    with pytest.raises(StagingFailed, match="readable SQLite"):
        stage_component("c", tmp_path / "junk.sqlite3", tmp_path / "out")


def test_manifest_checksums_catch_a_changed_file(tmp_path: Path) -> None:
    live_database(tmp_path / "live.sqlite3").close()
    staged = stage_component("conversations", tmp_path / "live.sqlite3", tmp_path)
    write_manifest(tmp_path, [staged])
    manifest = read_manifest(tmp_path)
    assert verify_restored("conversations", staged.path, manifest).ok
    with staged.path.open("r+b") as handle:
        handle.seek(5000)
        handle.write(b"\xff" * 16)
    damaged = verify_restored("conversations", staged.path, manifest)
    assert not damaged.ok and damaged.checksum_matches is False


def test_clear_folder_keeps_the_folder(tmp_path: Path) -> None:
    (tmp_path / "a.sqlite3").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_text("y")
    clear_folder(tmp_path)
    assert tmp_path.is_dir() and not list(tmp_path.iterdir())


def test_live_signature_changes_with_a_commit_and_not_with_a_read(tmp_path: Path) -> None:
    path = tmp_path / "live.sqlite3"
    db = live_database(path)
    before = live_signature(path)
    assert before is not None and before == live_signature(path)
    db.execute("SELECT count(*) FROM conversations").fetchone()
    assert live_signature(path) == before
    db.execute("INSERT INTO budgets VALUES ('gym', 60)")
    db.commit()
    assert live_signature(path) != before
    db.close()
    assert live_signature(tmp_path / "absent.sqlite3") is None


def test_a_damaged_file_is_told_by_its_extended_codes_too() -> None:
    """Python gives SQLite's extended result code (SQLITE_CORRUPT_INDEX is 779): only the
    two primary codes were matched, so a damaged index read as a lock or an I/O error."""
    for code, damaged in ((26, True), (11, True), (779, True), (523, True), (5, False)):
        exc = sqlite3.DatabaseError("database disk image is malformed")
        exc.sqlite_errorcode = code
        assert not_a_database(exc) is damaged, code
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = 5
    assert not not_a_database(busy) and not not_a_database(OSError(26, "x"))


def test_a_copy_of_damaged_pages_is_refused_unless_kept_as_found(tmp_path: Path) -> None:
    """SQLite's backup API copies a damaged page as it is: the snapshot of it was listed as
    a restore point, and only a test rollback found it."""
    source = tmp_path / "budgets.sqlite3"
    with sqlite3.connect(source) as db:
        db.execute("CREATE TABLE expenses (id INTEGER PRIMARY KEY, note TEXT)")
        db.executemany("INSERT INTO expenses (note) VALUES (?)", [("x" * 200,)] * 200)
        (root,) = db.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'expenses'"
        ).fetchone()
        size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with source.open("r+b") as file:
        file.seek(root * size)  # the table's second page: the file still opens
        file.write(b"\xa5" * size)
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(StagingFailed, match=r"budgets.sqlite3 is damaged \(.+\): not backed up"):
        stage_component("budgets", source, staging)
    assert list(staging.iterdir()) == []
    kept = stage_component("budgets", source, staging, as_found=True)
    assert kept.path.stat().st_size == source.stat().st_size  # the safety copy: kept


async def test_the_live_size_holds_the_rows_still_in_the_write_ahead_log(tmp_path: Path) -> None:
    """It was the main file's bytes alone: a store whose rows sat in its write-ahead log
    read as small as an empty one."""
    path = tmp_path / "budgets.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE t (x TEXT)")
    db.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 200)
    db.commit()
    try:
        wal = tmp_path / "budgets.sqlite3-wal"
        assert wal.stat().st_size > 0
        config = BackupConfig(components={"budgets": path}, work_dir=tmp_path / "work")
        files = config.build(None, SnapshotIndex(), EventPublisher())  # type: ignore[arg-type]
        sizes = await files.live_sizes()
        assert sizes == {"budgets": path.stat().st_size + wal.stat().st_size}
    finally:
        db.close()
