"""The manager's own folders: a fixed staging folder and throwaway scratch folders.

Rollback scratch folders sit next to the live files, so the restored files are on the same
filesystem and `os.replace` can swap them in atomically.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from backup.staging import clear_folder

ROLLBACK_SCRATCH_PREFIX = ".ers-rollback-"
OLD_FILE_MARKER = ".ers-old-"
# Written by `backup.swap_journal` (which imports this module) while a swap is unfinished.
SWAP_JOURNAL_NAME = ".ers-swap-journal.json"


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def staging_dir(self) -> Path:
        """Always the same path: restic finds the parent snapshot by the backed-up path."""
        path = self.root / "staging"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def scratch_root(self) -> Path:
        """Scratch folders, start gates and copies awaiting deletion; emptied on start."""
        return self.root / "scratch"

    def scratch(self, purpose: str) -> contextlib.AbstractContextManager[Path]:
        return _folder_for_a_while(self.scratch_root(), f"{purpose}-")

    def scratch_next_to(self, live_file: Path) -> contextlib.AbstractContextManager[Path]:
        return _folder_for_a_while(live_file.parent, ROLLBACK_SCRATCH_PREFIX)

    def remove_leftovers(self, live_files: Iterable[Path]) -> None:
        """Clear what an interrupted run (a crash, a kill) left behind."""
        shutil.rmtree(self.scratch_root(), ignore_errors=True)
        # A backup killed mid-way leaves a copy of every file it staged, as large as the state.
        clear_folder(self.root / "staging")
        for folder in {Path(f).resolve().parent for f in live_files}:
            if not folder.is_dir() or (folder / SWAP_JOURNAL_NAME).exists():
                # A swap's journal that start-up could not undo names files that may be the
                # only copy of the state before it: they stay until it is resolved.
                continue
            (folder / f"{SWAP_JOURNAL_NAME}.draft").unlink(missing_ok=True)  # never written
            for entry in folder.glob(f"{ROLLBACK_SCRATCH_PREFIX}*"):
                shutil.rmtree(entry, ignore_errors=True)
            # An old file is a second name of the pre-rollback data, kept only until the
            # swap is committed; the live name always holds a whole database.
            for entry in folder.glob(f"*{OLD_FILE_MARKER}*"):
                entry.unlink(missing_ok=True)


@contextlib.contextmanager
def _folder_for_a_while(parent: Path, prefix: str) -> Iterator[Path]:
    """A new folder in ``parent``, deleted with what it holds when the block ends."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
