"""Swapping restored SQLite files over the live ones, atomically per file, and undoing it.

Each live file keeps a second name (a hard link) until the whole rollback is committed, so a
failure at any later point can put every file back as it was.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from backup.discard import delete_soon
from backup.staging import fsync_directory, fsync_file
from backup.workspace import OLD_FILE_MARKER

SIDE_FILES = ("-wal", "-shm", "-journal")


class WritersStillActive(RuntimeError):
    pass


@dataclass(frozen=True)
class SwappedFile:
    live: Path
    old: Path | None  # None when there was no live file before


def place_next_to(restored: Path, live: Path) -> Path:
    """A durable copy of `restored` on the live file's filesystem, ready for `os.replace`."""
    live.parent.mkdir(parents=True, exist_ok=True)
    if restored.stat().st_dev != live.parent.stat().st_dev:
        target = live.parent / f".{live.name}.ers-new-{secrets.token_hex(4)}"
        shutil.copyfile(restored, target)
        restored = target
    fsync_file(restored)
    return restored


def fold_wal_into(live: Path) -> None:
    """Move everything in the live file's write-ahead log into the file itself.

    After this the -wal file is empty, so a crash between the swap and its removal cannot
    replay old log pages onto the restored database.
    """
    if not live.exists():
        return
    db = sqlite3.connect(live, timeout=5, isolation_level=None)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # recovers a hot journal
        if Path(f"{live}-wal").exists():
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                raise WritersStillActive(
                    f"{live.name} is still in use by another connection: close the store's "
                    "connections inside pause_writers"
                )
    finally:
        db.close()


def swap_in(pairs: list[tuple[Path, Path]]) -> list[SwappedFile]:
    """Replace each live file with its restored one; on any failure undo those already done."""
    done: list[SwappedFile] = []
    try:
        for restored, live in pairs:
            fold_wal_into(live)
            old = None
            if live.exists():
                old = live.with_name(f"{live.name}{OLD_FILE_MARKER}{secrets.token_hex(4)}")
                os.link(live, old)
            try:
                os.replace(restored, live)
            except BaseException:
                if old is not None:
                    old.unlink(missing_ok=True)
                raise
            done.append(SwappedFile(live, old))
            _remove_side_files(live)
            fsync_directory(live.parent)
    except BaseException:
        undo(done)
        raise
    return done


def undo(done: list[SwappedFile]) -> None:
    for swapped in reversed(done):
        if swapped.old is not None:
            os.replace(swapped.old, swapped.live)
        else:
            swapped.live.unlink(missing_ok=True)
        _remove_side_files(swapped.live)
        fsync_directory(swapped.live.parent)


def commit_soon(done: list[SwappedFile]) -> None:
    """Drop the old names in the background: they hold nothing the rollback still needs."""
    delete_soon(swapped.old for swapped in done if swapped.old is not None)


def _remove_side_files(live: Path) -> None:
    for suffix in SIDE_FILES:
        Path(f"{live}{suffix}").unlink(missing_ok=True)
