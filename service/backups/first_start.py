"""Where backups keep their files in the data directory, whether a start is the first of
that directory (only then may the service create the backup repository on its own), and
what a start puts right before the stores open."""

from __future__ import annotations

import logging
from pathlib import Path

from backup import swap_journal
from backup.identity import RECORD_FILE_NAME
from backup.staging import not_a_database
from service.errors import StateFileUnreadable, StoreUnavailable
from service.settings import COMPONENTS, Settings
from service.stores import Stores

log = logging.getLogger("ers.backups")

# Left in a brand-new data directory until its backup repository is recorded.
FIRST_START_MARK = ".ers-first-start"
# Staging copies and scratch folders of backups and rollbacks.
WORK_DIR_NAME = ".backup-work"


def backup_work_dir(data_dir: Path) -> Path:
    """Inside the data directory, the one place the service is sure to be able to write (in
    the image, a volume owned by its user, where the folder beside it is not), and on the
    same disk as the files a rollback swaps."""
    return data_dir / WORK_DIR_NAME


def finds_no_state(data_dir: Path, *, backups_enabled: bool = True) -> bool:
    """True on the first start of a brand-new data directory: no component file and no record
    of a backup repository. Only then may the service create the repository on its own.

    Only the components' files count: the kept-trace archive is no state to back up, and on
    PostgreSQL it is the only file replicas sharing a data directory write there; counting it
    made a replica starting beside another that was creating the repository take it for a
    lost one (a critical incident) instead of waiting on the creation lock and adopting it.

    A first start leaves a mark that stays until the repository is recorded, so a first start
    stopped before it made the repository (Ctrl-C, SIGTERM or kill -9 in its first seconds)
    is still one when started again: it had made the component files, and the next start
    took the missing repository for a lost one, refused every backup and opened a critical
    incident until `ers backup init`. A start with backups off makes no repository and leaves
    no mark: the state it makes is existing state to a later start with backups on, which
    then waits for `ers backup init` as for any state without a repository."""
    if (data_dir / RECORD_FILE_NAME).exists():
        return False
    mark = data_dir / FIRST_START_MARK
    if mark.exists():
        return True
    if any((data_dir / f"{name}.sqlite3").exists() for name in (*COMPONENTS, "incidents")):
        return False
    if backups_enabled:
        data_dir.mkdir(parents=True, exist_ok=True)
        mark.touch()
    return True


def first_start_done(data_dir: Path) -> None:
    """The repository is recorded: later starts go by the record."""
    (data_dir / FIRST_START_MARK).unlink(missing_ok=True)


def undo_interrupted_swap(settings: Settings) -> list[swap_journal.Undone]:
    """A rollback killed in the middle of its swap left some component files rolled back and
    others not: put them all back (one log line each) before any store opens them; what was
    undone, for the audit trail. On PostgreSQL a rollback is one transaction and leaves
    nothing to undo."""
    if settings.database_url is None:
        try:
            return swap_journal.recover([settings.data_dir])
        except swap_journal.SwapRecoveryFailed as exc:
            log.error("refusing to start: %s", exc)
            raise
    return []


async def open_state(settings: Settings) -> Stores:
    """The stores, open. On SQLite a file that cannot be opened (overwritten, damaged, not
    readable by the service's user) refuses the start in one line with the ways out, rather
    than uvicorn's traceback of the failed start-up."""
    stores = Stores.from_settings(settings)
    try:
        await stores.open()
    except StoreUnavailable as exc:
        if settings.database_url is not None:
            raise
        out = (
            f"; roll it back without the service (`ers backup --offline list`, then `ers backup"
            f" --offline rollback ID --components {exc.component} --reason ... --yes`), or move"
            " it away to start with an empty store"
            if not_a_database(exc.__cause__)
            else ""
        )
        log.error("refusing to start: %s%s", exc, out)
        raise StateFileUnreadable(exc.component, exc.reason) from None
    return stores
