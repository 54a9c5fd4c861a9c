"""The swap journal: what a multi-file swap is about to do, durable before it starts.

A rollback swaps several component files in one after another (`backup.swap`). A process
killed between two renames (kill -9, a power loss) would leave some components rolled back and
others not. So before the first rename the swap writes and fsyncs a journal in the folder of
the live files, naming for every file its live path, the second name its old content gets
(`<live>.ers-old-<token>`, or none when there was no live file), the restored file that
replaces it, the snapshot rolled back to and the rollback's safety snapshot. The journal is
removed (and its removal fsynced) only once the rollback is committed: every file swapped and
the stores reopened on them.

The rule for a journal found at start-up: undo. Every file whose old content still has its
second name gets it back, every file that had none before is removed, so the live state is
all the old state, never a mix; the rollback was never acknowledged, and the state is the one
its safety snapshot holds. Undo is always possible, because a second name is made before the
rename that replaces its file; finishing the swap instead would need restored files that the
start-up cleanup may already have removed and stores that never saw them reopened.

Start-up runs `recover` before any store opens the files and before the leftovers of an
interrupted run are removed; a folder whose journal could not be undone keeps its journal and
every file it names, so nothing that could repair it is deleted.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from backup.errors import BackupError
from backup.staging import fsync_directory
from backup.workspace import SWAP_JOURNAL_NAME

log = logging.getLogger(__name__)

JOURNAL_NAME = SWAP_JOURNAL_NAME
SIDE_FILES = ("-wal", "-shm", "-journal")
_FORMAT = 1


class SwapRecoveryFailed(BackupError):
    """An interrupted swap could not be undone; its journal and files are left in place."""

    label = "swap_recovery_failed"


@dataclass(frozen=True)
class JournalEntry:
    live: Path
    old: Path | None  # the old content's second name; None when there was no live file
    new: Path  # the restored file renamed over `live`


@dataclass(frozen=True)
class Undone:
    """What undoing a journal did, in file names."""

    journal: SwapJournal
    put_back: tuple[str, ...]  # live files that had been replaced and got their old content
    removed: tuple[str, ...]  # live files that did not exist before the swap
    untouched: tuple[str, ...]  # files the swap had not reached

    def describe(self) -> str:
        journal = self.journal
        parts = [
            f"put back {', '.join(self.put_back)}" if self.put_back else "",
            f"removed {', '.join(self.removed)}" if self.removed else "",
            f"left {', '.join(self.untouched)} unchanged" if self.untouched else "",
        ]
        done = "; ".join(p for p in parts if p) or "nothing to put back"
        return (
            f"undid the rollback to snapshot {journal.snapshot_id[:8]} that a crash interrupted "
            f"during its swap ({done}): the live state is the one from before it, also held "
            f"by its safety snapshot {journal.safety_snapshot_id[:8]}"
        )

    def record(self) -> dict[str, object]:
        """For the audit trail."""
        return {
            "backupId": self.journal.snapshot_id,
            "safetyBackupId": self.journal.safety_snapshot_id,
            "putBack": list(self.put_back),
            "removed": list(self.removed),
            "untouched": list(self.untouched),
        }


@dataclass(frozen=True)
class SwapJournal:
    path: Path
    entries: tuple[JournalEntry, ...]
    snapshot_id: str
    safety_snapshot_id: str

    @classmethod
    def beside(
        cls,
        entries: Iterable[JournalEntry],
        snapshot_id: str,
        safety_snapshot_id: str,
    ) -> SwapJournal:
        """A journal in the folder of the first live file."""
        listed = tuple(entries)
        return cls(listed[0].live.parent / JOURNAL_NAME, listed, snapshot_id, safety_snapshot_id)

    def write(self) -> None:
        """Durably, or not at all: written under another name, fsynced, renamed, the folder
        fsynced. An unfinished journal found here means a swap never recovered: refused."""
        if self.path.exists():
            raise SwapRecoveryFailed(
                f"{self.path} is the journal of an interrupted swap that was not undone: "
                "restart the service (or run an offline command) so start-up undoes it first"
            )
        body = {
            "format": _FORMAT,
            "snapshot": self.snapshot_id,
            "safety_snapshot": self.safety_snapshot_id,
            "files": [
                {"live": str(e.live), "old": str(e.old) if e.old else None, "new": str(e.new)}
                for e in self.entries
            ],
        }
        draft = self.path.with_name(f"{self.path.name}.draft")
        with draft.open("w", encoding="utf-8") as out:
            json.dump(body, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        os.replace(draft, self.path)
        fsync_directory(self.path.parent)

    @classmethod
    def read(cls, path: Path) -> SwapJournal:
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
            entries = tuple(
                JournalEntry(Path(f["live"]), Path(f["old"]) if f["old"] else None, Path(f["new"]))
                for f in body["files"]
            )
            return cls(path, entries, str(body["snapshot"]), str(body["safety_snapshot"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SwapRecoveryFailed(
                f"the swap journal {path} cannot be read ({exc}): the component files in "
                f"{path.parent} may be partly rolled back. Move the journal out of that "
                "folder, then roll back to the newest pre-rollback snapshot (`ers backup list "
                "--offline`) with `ers backup rollback <id> --offline`"
            ) from exc

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        fsync_directory(self.path.parent)

    def undo(self) -> Undone:
        """Every file back to its old content, whatever point the swap had reached."""
        put_back: list[str] = []
        removed: list[str] = []
        untouched: list[str] = []
        for entry in reversed(self.entries):
            live, old = entry.live, entry.old
            if old is None:
                # No live file existed when the journal was written and writers were paused:
                # a file there now is the restored one.
                if live.exists():
                    live.unlink()
                    removed.append(live.name)
                else:
                    untouched.append(live.name)
            elif not old.exists():
                untouched.append(live.name)  # the second name is made before the rename
            elif live.exists() and os.path.samefile(live, old):
                old.unlink()  # the second name was made, the rename was not
                untouched.append(live.name)
            else:
                os.replace(old, live)
                put_back.append(live.name)
            remove_side_files(live)
            fsync_directory(live.parent)
        return Undone(  # in the journal's order
            self, tuple(put_back[::-1]), tuple(removed[::-1]), tuple(untouched[::-1])
        )


def remove_side_files(live: Path) -> None:
    """The -wal, -shm and -journal files: the old content's log was folded into it before
    the swap, so any left beside a swapped file belong to the other content."""
    for suffix in SIDE_FILES:
        Path(f"{live}{suffix}").unlink(missing_ok=True)


def recover(folders: Iterable[Path]) -> list[Undone]:
    """Undo the swap of every journal found in `folders`, then remove the journal, each in one
    log line; a journal that cannot be undone raises SwapRecoveryFailed and stays, with its
    files."""
    undone = []
    for folder in sorted({Path(f).resolve() for f in folders}):
        path = folder / JOURNAL_NAME
        if not path.exists():
            continue
        journal = SwapJournal.read(path)
        try:
            result = journal.undo()
        except OSError as exc:
            raise SwapRecoveryFailed(
                f"undoing the interrupted swap of {path} failed ({exc}): the component files "
                "may be partly rolled back; nothing was deleted. Fix the cause and start "
                "again (the undo is retried), or move the journal out of that folder and run "
                f"`ers backup rollback {journal.safety_snapshot_id} --offline` (its safety "
                "snapshot)"
            ) from exc
        journal.remove()
        log.warning("%s", result.describe())
        undone.append(result)
    return undone
