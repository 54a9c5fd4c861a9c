"""The PostgreSQL backup manager against a real server and the real restic: a repository that
disappears is refused by name and never recreated, a snapshot another process made is found
on lookup, and the reason given is the snapshot's reason tag."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from backup import (
    BackupManager,
    InvalidBackupReason,
    PgBackupConfig,
    RepositoryConfig,
    RepositoryMissing,
    pg_rollback,
)
from backup.errors import PgRestoreFailed
from service.health.checks import Status
from service.health.stores_check import StoresCheck
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


@pytest.mark.parametrize("confirmed", [False, True])
async def test_psql_commits_a_rollback_only_once_ers_confirmed_its_input(
    repository: RepositoryConfig, pg_url: str, schemas: dict[str, str], confirmed: bool
) -> None:
    """Killed midway, ERS leaves the programs it started running: pg_restore's end of output
    used to be the only end psql needed, and it could commit a rollback whose safety snapshot
    never finished. psql's check now wants the last line only ERS writes, after the safety
    snapshot: input that ended without it changes nothing."""
    manager = await open_manager(repository, pg_url, schemas, may_create=True)
    rollback = manager.backend.rollback  # type: ignore[attr-defined]
    schema = schemas["budgets"]
    old = f"{schema}{pg_rollback.OLD_SCHEMA_MARKER}0000abcd"
    restored = f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.restored (v int);\n".encode()
    read_end, write_end = os.pipe()
    os.write(write_end, restored + (pg_rollback.CONFIRM_LINE if confirmed else b""))
    os.close(write_end)  # as when ERS was killed and pg_restore finished on its own
    try:
        if confirmed:
            await rollback._load_and_swap(schema, old, stdin=read_end)
        else:
            with pytest.raises(PgRestoreFailed, match="ended without the confirmation"):
                await rollback._load_and_swap(schema, old, stdin=read_end)
    finally:
        os.close(read_end)
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,),
        ).fetchall()
    swapped = [("restored",)]
    assert (tables == swapped) is confirmed, tables
    if not confirmed:
        assert tables, "the live schema is as it was"


async def test_another_replicas_rollback_is_a_pause_in_the_stores_check_not_a_failure(
    repository: RepositoryConfig, pg_url: str, schemas: dict[str, str]
) -> None:
    """A rollback holds off every other session's writes to its schema until its swap has
    committed, as long as its restore and safety snapshot take. Another replica's write
    probe used to wait for it past the check's 3 s, and the check called the store not
    writable: a high incident shared by the fleet, for the operator's own rollback."""
    manager = await open_manager(repository, pg_url, schemas, may_create=True)
    rollback = manager.backend.rollback  # type: ignore[attr-defined]
    replica = Stores.on_postgres(pg_url)  # the other replica's stores
    await replica.open()
    try:
        async with rollback._other_writers_held("budgets", schemas["budgets"]):
            result = await StoresCheck(replica.by_component()).run()
        assert result.status is Status.DEGRADED, result
        assert result.reason == "paused for a rollback: budgets"
        assert result.error is None  # no incident
        assert "another replica" in result.figures["budgets"]
        assert (await StoresCheck(replica.by_component()).run()).status is Status.HEALTHY
    finally:
        await replica.close()
