"""A read-only repository (its locks folder cannot be written) with the real restic binary:
a snapshot's files are still read, by `restic dump` (PostgreSQL's test rollback) and
`restic restore` (SQLite's test rollback, the drill), while a command that writes is refused
at once with the repository named."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from backup.errors import RepositoryReadOnly
from backup.restic import Restic


async def test_a_read_only_repository_still_gives_its_snapshots_files(
    tmp_path: Path, immutable: list[Path]
) -> None:
    password = tmp_path / "password"
    password.write_text("a-password\n")
    restic = Restic(str(tmp_path / "repo"), password, cache_dir=tmp_path / "cache")
    await restic.init()
    source = tmp_path / "source"
    source.mkdir()
    (source / "budgets.sqlite3").write_bytes(b"the snapshot's bytes\n" * 100)
    summary = await restic.backup(["budgets.sqlite3"], cwd=source, tags=["t"])
    snapshot_id = summary["snapshot_id"]
    locks = tmp_path / "repo" / "locks"
    done = subprocess.run(["chattr", "+i", str(locks)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this filesystem cannot make folders immutable: {done.stderr.strip()}")
    immutable.append(locks)
    assert restic.read_only() is not None

    dumped = tmp_path / "dumped"
    with dumped.open("wb") as out:
        await restic.dump(snapshot_id, "/budgets.sqlite3", stdout=out.fileno(), timeout=60)
    assert dumped.read_bytes() == (source / "budgets.sqlite3").read_bytes()
    await restic.restore(snapshot_id, tmp_path / "restored", timeout=60)
    restored = [p for p in (tmp_path / "restored").rglob("budgets.sqlite3")]
    assert [p.read_bytes() for p in restored] == [dumped.read_bytes()]

    with pytest.raises(RepositoryReadOnly, match="cannot be written"):
        await restic.backup(["budgets.sqlite3"], cwd=source, tags=["t"])
    assert os.listdir(locks) == []
