"""Consistent copies of SQLite files, and the checks run on copies coming back from restic.

A live SQLite file cannot be copied byte for byte while a writer may be committing; the online
backup API copies a consistent state page by page instead. Every staged file is named
`<component>.sqlite3` so its path inside the snapshot never changes between runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from backup.discard import remove
from backup.errors import DiskFull, StagingFailed
from backup.models import FileVerification

log = logging.getLogger(__name__)

MANIFEST_NAME = "ers-manifest.json"
# What SQLite says of a file whose content it cannot take: not a database, or damaged.
UNREADABLE_CODES = (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)


@dataclass(frozen=True)
class StagedFile:
    component: str
    path: Path
    sha256: str
    size: int
    as_found: bool = False  # copied byte for byte: SQLite took it for no database


# (inode, size, mtime, ctime) of a live file, then (size, mtime) of its write-ahead log.
Signature = tuple[tuple[int, ...] | None, ...]


def live_signature(path: Path) -> Signature | None:
    """How a live file and its WAL look now; equal looks suggest, never prove, equal content.

    A reader (our own copy included) may create an empty WAL and touch its ctime, so only a
    WAL's size and mtime count, and an empty WAL counts as none.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    try:
        wal = Path(f"{path}-wal").stat()
    except FileNotFoundError:
        wal = None
    log = (wal.st_size, wal.st_mtime_ns) if wal is not None and wal.st_size else None
    return ((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), log)


def staged_name(component: str) -> str:
    return f"{component}.sqlite3"


def not_a_database(exc: BaseException | None) -> bool:
    """Whether ``exc`` is SQLite refusing a file's content (its header overwritten, its pages
    damaged), as against a lock, a permission or an I/O error."""
    code = getattr(exc, "sqlite_errorcode", None)
    # An extended code (SQLITE_CORRUPT_INDEX is 779) keeps its primary one in its low byte.
    return isinstance(exc, sqlite3.DatabaseError) and ((code or 0) & 0xFF) in UNREADABLE_CODES


def copy_consistently(
    source: Path, destination: Path, *, busy_timeout: float = 30.0, as_found: bool = False
) -> bool:
    """Copy a live SQLite file with the online backup API (one read transaction); with
    ``as_found``, a file SQLite does not take for a database is copied byte for byte, and
    True returned."""
    if not source.exists():
        raise StagingFailed(f"the state file {source} does not exist: check the data directory")
    destination.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=busy_timeout)
        try:
            dst = sqlite3.connect(destination)
            try:
                # The copy is thrown away on failure, so it needs neither journal nor fsync.
                dst.execute("PRAGMA journal_mode=OFF")
                dst.execute("PRAGMA synchronous=OFF")
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        destination.unlink(missing_ok=True)
        if as_found and not_a_database(exc):
            log.warning("%s is no readable SQLite database (%s): kept byte for byte", source, exc)
            shutil.copyfile(source, destination)
            return True
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            raise DiskFull(
                f"could not copy {source} to {destination.parent}: the disk is full; free "
                "space there (pruning old snapshots frees only the repository's disk), then "
                "try again"
            ) from None
        raise StagingFailed(
            f"could not copy {source} ({exc}): check that it is a readable SQLite database"
        ) from exc
    return False


def file_sha256(path: Path) -> str:
    # file_digest reads into one reused buffer: about 10% faster than read() per block.
    with path.open("rb", buffering=0) as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def stage_component(
    component: str, source: Path, staging_dir: Path, *, as_found: bool = False
) -> StagedFile:
    """A consistent copy of ``source`` in the staging folder, hashed, and checked unless it
    is kept as found: a copy of damaged pages (SQLite's backup API copies them as they are)
    raises StagingFailed, as a snapshot of it would look like a restore point and be none.
    A rollback's safety copy keeps the file whatever it holds, unchecked: the check would
    hold the writers the rollback pauses (the service names a store it knows damaged)."""
    destination = staging_dir / staged_name(component)
    found = copy_consistently(source, destination, as_found=as_found)
    if found or as_found:
        digest = file_sha256(destination)
    else:
        damage, digest = checked_and_hashed(destination, quick=True)  # about 0.1 s per 75 MB
        if damage != "ok":
            destination.unlink(missing_ok=True)
            raise StagingFailed(
                f"{source} is damaged ({damage}): not backed up, as a snapshot of it would "
                f"be no restore point; roll {component} back (`ers backup test-rollback ID "
                f"--components {component}` finds a snapshot whose copy is sound)"
            )
    return StagedFile(component, destination, digest, destination.stat().st_size, found)


def write_manifest(staging_dir: Path, staged: Iterable[StagedFile]) -> Path:
    """Checksums travel inside the snapshot so a restore can be verified anywhere, any time;
    a file kept as found is marked so, as no rollback can go back to it."""
    manifest: dict[str, dict[str, object]] = {}
    for f in staged:
        manifest[f.component] = {"sha256": f.sha256, "size": f.size}
        if f.as_found:
            manifest[f.component]["asFound"] = True
    path = staging_dir / MANIFEST_NAME
    path.write_text(json.dumps(manifest, sort_keys=True, indent=1))
    return path


def read_manifest(folder: Path) -> dict[str, dict[str, object]]:
    path = folder / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


def clear_folder(folder: Path) -> None:
    """Empty `folder` but keep it, so its path (and restic's parent detection) stays put."""
    if folder.exists():
        for entry in folder.iterdir():
            remove(entry)


def integrity_of(path: Path, *, quick: bool = False) -> str:
    """`PRAGMA integrity_check` (or the quicker `quick_check`, which leaves out the indexes'
    agreement with their tables) on a file nobody else uses; "ok" or SQLite's first
    complaint."""
    try:
        db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            rows = db.execute(f"PRAGMA {'quick_check' if quick else 'integrity_check'}").fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        return f"unreadable: {exc}"
    first = str(rows[0][0]) if rows else "no answer"
    return "ok" if first == "ok" and len(rows) == 1 else first


def verify_restored(
    component: str, path: Path, manifest: Mapping[str, Mapping[str, object]]
) -> FileVerification:
    expected = manifest.get(component, {}).get("sha256")
    if not path.exists():
        return FileVerification(component, "missing from the restore", None, 0)
    integrity, digest = checked_and_hashed(path, hashed=expected is not None)
    matches = None if digest is None else digest == expected
    return FileVerification(component, integrity, matches, path.stat().st_size)


def checked_and_hashed(
    path: Path, *, quick: bool = False, hashed: bool = True
) -> tuple[str, str | None]:
    """``integrity_of(path)`` and, unless not ``hashed``, its SHA-256: both read the whole
    file, so it is hashed in another thread while SQLite checks it."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(file_sha256, path) if hashed else None
        integrity = integrity_of(path, quick=quick)
        return integrity, None if digest is None else digest.result()


def table_row_counts(path: Path, *, live: bool) -> dict[str, int]:
    """Rows per user table; live files are opened read-only alongside their writers."""
    if not path.exists():
        return {}
    uri = f"file:{path}?mode=ro" if live else f"file:{path}?immutable=1"
    db = sqlite3.connect(uri, uri=True, timeout=10)
    try:
        tables = [
            row[0]
            for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        quoted = {t: '"' + t.replace('"', '""') + '"' for t in tables}
        return {t: db.execute(f"SELECT COUNT(*) FROM {quoted[t]}").fetchone()[0] for t in tables}
    finally:
        db.close()


def fsync_file(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: Path) -> None:
    fsync_file(path, os.O_RDONLY | os.O_DIRECTORY)
