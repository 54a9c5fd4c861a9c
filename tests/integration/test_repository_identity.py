"""The repository the backups go to, with the real restic: created only when asked, its id
remembered, and a repository that disappears or is swapped refused by name; the snapshot list
follows what other processes do; the reason given is the reason tag."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

from backup import (
    BackupManager,
    InvalidBackupReason,
    RepositoryConfig,
    RepositoryMissing,
    RepositoryReplaced,
    init_repository,
)
from backup.repository import open_identified

pytestmark = pytest.mark.integration


def restic(config: RepositoryConfig, *args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        ["restic", *args],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")},
            "RESTIC_REPOSITORY": config.repository,
            "RESTIC_PASSWORD_FILE": str(config.password_file),
        },
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def snapshots(config: RepositoryConfig) -> list[dict]:
    return json.loads(restic(config, "snapshots", "--json") or "[]") or []


def repository_id(config: RepositoryConfig) -> str:
    return str(json.loads(restic(config, "cat", "config"))["id"])


async def test_a_missing_repository_is_created_only_by_init(tmp_path: Path) -> None:
    record = tmp_path / "data" / "restic-repository.json"
    config = RepositoryConfig(str(tmp_path / "repo"), tmp_path / "password", record_file=record)
    with pytest.raises(RepositoryMissing, match="ers backup init"):
        await open_identified(config)
    assert not (tmp_path / "repo").exists() and not record.exists()

    outcome = await init_repository(config)
    assert outcome.created and outcome.previous_id is None
    assert outcome.identity.expected_id == repository_id(config)
    assert json.loads(record.read_text())["id"] == repository_id(config)


async def test_a_repository_moved_away_or_swapped_is_refused_and_init_adopts_the_new_one(
    repository_config: RepositoryConfig, tmp_path: Path
) -> None:
    record = tmp_path / "data" / "restic-repository.json"
    config = dataclasses.replace(repository_config, record_file=record)
    original = (await open_identified(config)).expected_id  # first open remembers the id
    assert json.loads(record.read_text())["id"] == original == repository_id(config)

    repository = Path(config.repository)
    repository.rename(tmp_path / "moved-away")
    with pytest.raises(RepositoryMissing, match="gone"):
        await open_identified(config, may_create=True)  # not even a first start recreates it
    assert not repository.exists()

    restic(config, "init")  # someone puts an empty repository in its place
    with pytest.raises(RepositoryReplaced, match=original[:8]):
        await open_identified(config)

    adopted = await init_repository(config)
    assert not adopted.created and adopted.previous_id == original
    assert (await open_identified(config)).expected_id == repository_id(config) != original


async def test_backups_into_a_vanished_or_swapped_repository_fail_by_name(
    manager: BackupManager, repository_config: RepositoryConfig, tmp_path: Path
) -> None:
    await manager.create(None, "manual")
    repository = Path(repository_config.repository)
    repository.rename(tmp_path / "moved-away")

    with pytest.raises(RepositoryMissing, match="gone"):
        await manager.create(None, "manual")
    with pytest.raises(RepositoryMissing):
        await manager.refresh()
    # A check says what the health check says, not restic's bare "no repository there".
    with pytest.raises(RepositoryMissing, match="gone"):
        await manager.check()
    assert not repository.exists()

    restic(repository_config, "init")
    with pytest.raises(RepositoryReplaced):
        await manager.create(None, "manual")
    with pytest.raises(RepositoryReplaced):
        await manager.check()
    assert snapshots(repository_config) == []  # nothing went into the stand-in


async def test_the_list_finds_a_snapshot_another_process_made_and_drops_a_forgotten_one(
    manager: BackupManager, repository_config: RepositoryConfig, state_files: dict[str, Path]
) -> None:
    ours = await manager.create(None, "manual")
    assert ours.snapshot_id is not None
    data = state_files["budgets"].parent
    restic(
        repository_config,
        "backup",
        "--tag",
        "ers",
        "--tag",
        "component:budgets",
        "--tag",
        "reason:manual",
        "budgets.sqlite3",
        cwd=data,
    )
    # restic 0.14 reports the short id after a backup
    theirs = next(
        s for s in snapshots(repository_config) if not s["id"].startswith(ours.snapshot_id)
    )

    details = await manager.details(theirs["short_id"])  # not in the list until looked for
    assert details.snapshot.id == theirs["id"]
    assert theirs["id"] in {s.id for s in manager.list()}

    restic(repository_config, "forget", ours.snapshot_id)
    await manager.refresh()
    assert [s.id for s in manager.list()] == [theirs["id"]]


async def test_the_reason_given_is_the_reason_tag_and_a_bad_one_is_refused(
    manager: BackupManager, repository_config: RepositoryConfig
) -> None:
    result = await manager.create(None, "before-upgrade")
    [snapshot] = snapshots(repository_config)
    assert result.snapshot_id and snapshot["id"].startswith(result.snapshot_id)
    assert "reason:before-upgrade" in snapshot["tags"]
    assert manager.list()[0].reason == "before-upgrade"

    for bad in ("before upgrade", "a,b", "x:y", "Upper", "-dash", "x" * 65, ""):
        with pytest.raises(InvalidBackupReason):
            await manager.create(None, bad)
    assert len(snapshots(repository_config)) == 1
