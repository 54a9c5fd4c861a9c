"""The PostgreSQL backup manager against a real server and the real restic: a repository that
disappears is refused by name and never recreated, a snapshot another process made is found
on lookup, and the reason given is the snapshot's reason tag."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backup import (
    BackupManager,
    InvalidBackupReason,
    PgBackupConfig,
    RepositoryConfig,
    RepositoryMissing,
)
from service.stores import Stores
from service.stores.postgres import PostgresStore

pytestmark = pytest.mark.integration


def restic_snapshots(config: RepositoryConfig) -> list[dict]:
    done = subprocess.run(
        ["restic", "snapshots", "--json"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")},
            "RESTIC_REPOSITORY": config.repository,
            "RESTIC_PASSWORD_FILE": str(config.password_file),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout or "[]") or []


@pytest.fixture
async def schemas(pg_url: str) -> AsyncIterator[dict[str, str]]:
    stores = Stores.on_postgres(pg_url)
    await stores.open()  # the real schemas, as the service migrates them
    found = stores.by_component()
    assert all(isinstance(store, PostgresStore) for store in found.values())
    yield {name: str(store.schema) for name, store in found.items()}  # type: ignore[attr-defined]
    await stores.close()


@pytest.fixture
def repository(tmp_path: Path) -> RepositoryConfig:
    return RepositoryConfig(
        str(tmp_path / "repo"),
        tmp_path / "password",
        cache_dir=tmp_path / "restic-cache",
        command_timeout_seconds=120,
        record_file=tmp_path / "data" / "restic-repository.json",
    )


async def open_manager(
    repository: RepositoryConfig, pg_url: str, schemas: dict[str, str], *, may_create: bool
) -> BackupManager:
    return await BackupManager.open(
        repository, PgBackupConfig(schemas, pg_url, timeout_seconds=120), may_create=may_create
    )


async def test_a_pg_backup_keeps_its_reason_and_a_vanished_repository_is_not_recreated(
    repository: RepositoryConfig, pg_url: str, schemas: dict[str, str], tmp_path: Path
) -> None:
    with pytest.raises(RepositoryMissing, match="ers backup init"):
        await open_manager(repository, pg_url, schemas, may_create=False)
    manager = await open_manager(repository, pg_url, schemas, may_create=True)

    result = await manager.create(["budgets"], "before-upgrade")
    [snapshot] = restic_snapshots(repository)
    assert result.snapshot_id and snapshot["id"].startswith(result.snapshot_id)
    assert "reason:before-upgrade" in snapshot["tags"]
    with pytest.raises(InvalidBackupReason, match="no spaces"):
        await manager.create(["budgets"], "before upgrade")

    Path(repository.repository).rename(tmp_path / "moved-away")
    with pytest.raises(RepositoryMissing, match="gone"):
        await manager.create(["budgets"], "manual")
    with pytest.raises(RepositoryMissing, match="gone"):
        await open_manager(repository, pg_url, schemas, may_create=True)
    assert not Path(repository.repository).exists()


async def test_a_pg_snapshot_made_by_another_process_is_found_on_lookup(
    repository: RepositoryConfig, pg_url: str, schemas: dict[str, str]
) -> None:
    ours = await open_manager(repository, pg_url, schemas, may_create=True)
    theirs = await open_manager(repository, pg_url, schemas, may_create=False)
    made = await theirs.create(["profiles"], "manual")
    assert made.snapshot_id is not None
    assert ours.list() == []

    details = await ours.details(made.snapshot_id)
    assert details.snapshot.id.startswith(made.snapshot_id)
    assert [f.path for f in details.files] == ["/profiles.pgdump"]
