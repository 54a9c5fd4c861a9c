"""Swapping restored SQLite files over the live ones, all of them or none, and undoing it.

Each live file keeps a second name (a hard link) until the whole rollback is committed, and a
journal written before the first rename names every file involved (`backup.swap_journal`), so
a failure at any later point, or a kill of the process, can put every file back as it was.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from backup.discard import delete_soon
from backup.errors import BackupError
from backup.staging import fsync_directory, fsync_file, not_a_database
from backup.swap_journal import JournalEntry, SwapJournal, Undone, remove_side_files
from backup.workspace import OLD_FILE_MARKER


class WritersStillActive(RuntimeError):
    pass


@dataclass(frozen=True)
class Swap:
    """A swap done and not yet committed: its journal is still on disk."""

    journal: SwapJournal

    @property
    def olds(self) -> list[Path]:
        return [e.old for e in self.journal.entries if e.old is not None]


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
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # recovers a hot journal
        except sqlite3.DatabaseError as exc:
            # A file SQLite cannot read (what a rollback is run to replace) has nothing to
            # fold, when no log beside it could be replayed onto the restored file.
            logs = [log for log in (Path(f"{live}-wal"), Path(f"{live}-journal")) if log.exists()]
            if not not_a_database(exc):
                raise
            if any(log.stat().st_size for log in logs):
                raise BackupError(
                    f"{live} cannot be read ({exc}) and {', '.join(map(str, logs))} beside it"
                    " holds its log: move them away together (keep them), then roll back"
                ) from exc
            return
        if Path(f"{live}-wal").exists():
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                raise WritersStillActive(
                    f"{live.name} is still in use by another connection: close the store's "
                    "connections inside pause_writers"
                )
    finally:
        db.close()


def swap_in(pairs: list[tuple[Path, Path]], *, snapshot_id: str, safety_snapshot_id: str) -> Swap:
    """Replace each live file with its restored one; on any failure undo those already done.

    The journal is durable before the first rename and stays until `commit_soon` or `undo`.
    """
    for _, live in pairs:
        fold_wal_into(live)
    entries = [
        JournalEntry(
            live,
            live.with_name(f"{live.name}{OLD_FILE_MARKER}{secrets.token_hex(4)}")
            if live.exists()
            else None,
            restored,
        )
        for restored, live in pairs
    ]
    journal = SwapJournal.beside(entries, snapshot_id, safety_snapshot_id)
    journal.write()
    try:
        for entry in entries:
            _rename_in(entry)
    except BaseException:
        undo(Swap(journal))
        raise
    return Swap(journal)


def _rename_in(entry: JournalEntry) -> None:
    if entry.old is not None:
        os.link(entry.live, entry.old)
    os.replace(entry.new, entry.live)
    remove_side_files(entry.live)
    fsync_directory(entry.live.parent)


def undo(swap: Swap) -> Undone:
    """Every file back as it was before the swap; then the journal goes."""
    undone = swap.journal.undo()
    swap.journal.remove()
    return undone


def commit_soon(swap: Swap) -> None:
    """Commit the swap (its journal goes, durably) and drop the old names in the background:
    they hold nothing the rollback still needs."""
    swap.journal.remove()
    delete_soon(swap.olds)
