"""Processes that start together on a repository that does not exist yet, with the real
restic: one creates it, the others open it, and every one of them can read it afterwards."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

from backup.repository import RepositoryConfig, ensure_password_file, open_identified
from tests.conftest import run_restic


def test_openers_starting_together_create_one_repository_with_one_key(tmp_path: Path) -> None:
    repository, password_file = tmp_path / "repo", tmp_path / "password"
    config = RepositoryConfig(str(repository), password_file)

    async def open_together() -> list[object]:
        return await asyncio.gather(*(open_identified(config, may_create=True) for _ in range(4)))

    opened = asyncio.run(open_together())
    assert len(opened) == 4

    keys = run_restic(repository, password_file, "key", "list", "--json")
    assert keys.returncode == 0, keys.stderr
    assert len(json.loads(keys.stdout)) == 1
    snapshots = run_restic(repository, password_file, "snapshots", "--json")
    assert snapshots.returncode == 0, snapshots.stderr  # the config opens with that key


def test_a_password_file_created_by_racing_threads_is_whole_and_the_same_for_all(
    tmp_path: Path,
) -> None:
    path = tmp_path / "secrets" / "restic-password"
    start = threading.Barrier(8)
    seen: list[str] = []

    def create() -> None:
        start.wait()
        ensure_password_file(path)
        seen.append(path.read_text())  # read as soon as the call returns: never empty

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert len(seen) == 8
    assert len(set(seen)) == 1
    assert len(seen[0].strip()) >= 32
    assert seen[0].endswith("\n")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in path.parent.iterdir()] == ["restic-password"]  # no staged file left
