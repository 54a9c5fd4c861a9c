"""PostgreSQL backups in restic against a real server, the real component stores and the real
restic binary: back up, test a rollback, roll one component back, and fail in plain words."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from backup.errors import (
    BackupError,
    PgDumpFailed,
    RepositoryReadOnly,
    ResticTimeout,
    RollbackFailed,
    RollbackRefused,
)
from backup.events import BackupSucceeded, RollbackFinished
from backup.index import tags_for
from backup.manager import BackupManager
from backup.models import BackupResult, RollbackResult
from backup.pg import POSTGRES_TAG, PgBackupConfig
from backup.pg_scratch import SCRATCH_LOCK_CLASS, drop_abandoned_scratch_databases
from backup.pg_tools import PgConnection, PgTools
from backup.repository import RepositoryConfig, init_repository, open_identified
from backup.restic import Restic
from service.stores import Stores
from service.stores.base import ChatTurn
from service.stores.postgres import PostgresStore
from tests.processes import slow_restic
from tests.store_writes import (
    add_expense,
    opened,
    record_turn,
    set_limit,
    stored_turns,
    turn_count,
    upsert_profile,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def template_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised repository, copied per test: `restic init` alone takes seconds."""
    folder = tmp_path_factory.mktemp("pg-template")
    asyncio.run(init_repository(RepositoryConfig(str(folder / "repo"), folder / "password")))
    return folder


@pytest.fixture
async def restic(tmp_path: Path, template_repository: Path) -> Restic:
    shutil.copytree(template_repository / "repo", tmp_path / "repo")
    shutil.copy2(template_repository / "password", tmp_path / "password")
    config = RepositoryConfig(
        str(tmp_path / "repo"),
        tmp_path / "password",
        cache_dir=tmp_path / "restic-cache",
        command_timeout_seconds=120,
    )
    return (await open_identified(config)).restic


@pytest.fixture
async def stores(pg_url: str) -> AsyncIterator[Stores]:
    async with opened(Stores.on_postgres(pg_url)) as pg:
        yield pg


def config_for(stores: Stores, url: str) -> PgBackupConfig:
    """The component schemas as the real stores name them."""
    pg_stores = stores.by_component()
    assert all(isinstance(store, PostgresStore) for store in pg_stores.values())
    schemas = {name: str(store.schema) for name, store in pg_stores.items()}
    return PgBackupConfig(schemas, url, timeout_seconds=120)


@pytest.fixture
def backups(restic: Restic, stores: Stores, pg_url: str) -> BackupManager:
    return BackupManager(restic, config_for(stores, pg_url))


@contextlib.asynccontextmanager
async def nothing_to_pause() -> AsyncIterator[None]:
    yield


async def roll_back(backups: BackupManager, snapshot_id: str) -> RollbackResult:
    return await backups.rollback(snapshot_id, None, "manual", nothing_to_pause, lambda: None)


async def backup_each(backups: BackupManager, components: list[str] | None) -> list[BackupResult]:
    """The snapshot of each component, as the backups announce them."""
    made: list[BackupResult] = []
    unsubscribe = backups.subscribe(
        lambda e: made.append(e.result) if isinstance(e, BackupSucceeded) else None
    )
    try:
        await backups.create(components, "manual")
    finally:
        unsubscribe()
    return made


def turn(number: int, text: str = "") -> ChatTurn:
    return ChatTurn("u1", f"message {number}{text}", "reply", "nutrition", True, False)


async def record_turns(stores: Stores, start: int, count: int, text: str = "") -> None:
    for number in range(start, start + count):
        await record_turn(stores, turn(number, text))


def leftovers(url: str) -> tuple[list[str], list[str]]:
    """Old schemas and scratch databases a rollback or a test rollback left behind."""
    with psycopg.connect(url) as conn:
        schemas = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'ers\\_%\\_\\_%'"
        ).fetchall()
        databases = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'ers\\_scratch\\_%'"
        ).fetchall()
    return [row[0] for row in schemas], [row[0] for row in databases]


async def test_rolling_back_one_component_brings_its_rows_back_and_leaves_the_others(
    backups: BackupManager, stores: Stores, restic: Restic, pg_url: str
) -> None:
    await record_turns(stores, 0, 3)
    await set_limit(stores, "u1", "food", 40_000)
    await upsert_profile(stores, "u1", age=30, goal="strength")
    await stores.system_state.put("mode", {"round": 1})

    results = await backup_each(backups, None)
    by_component = {r.components[0]: r for r in results}
    assert set(by_component) == {"conversations", "budgets", "profiles", "system_state"}
    assert all(r.snapshot_id and r.total_size > 0 for r in results)
    listed = await restic.snapshots(tag=POSTGRES_TAG)
    assert {tuple(sorted(s["tags"])) for s in listed} == {
        tuple(sorted([*tags_for([c], "manual"), POSTGRES_TAG])) for c in by_component
    }

    await record_turns(stores, 3, 2)
    await set_limit(stores, "u1", "food", 99_999)
    await upsert_profile(stores, "u1", goal="endurance")
    await stores.system_state.put("mode", {"round": 2})

    snapshot_id = by_component["conversations"].snapshot_id
    assert snapshot_id is not None
    preview = await backups.test_rollback(snapshot_id)
    [component] = preview.components
    assert preview.ok and component.component == "conversations"
    assert component.verification.size == by_component["conversations"].total_size
    rows = {t.table: (t.rows_now, t.rows_in_snapshot) for t in component.tables}
    assert rows["turns"] == (5, 3)
    # By key: the two turns written since go, none come back or change.
    changes = {t.table: (t.added, t.removed, t.changed) for t in component.tables}
    assert changes["turns"] == (0, 2, 0)
    budgets_id = by_component["budgets"].snapshot_id
    assert budgets_id is not None
    [budgets] = (await backups.test_rollback(budgets_id)).components
    # The food limit set since is one row the rollback puts back as it was.
    assert {t.table: (t.added, t.removed, t.changed) for t in budgets.tables}["budgets"] == (
        0,
        0,
        1,
    )
    assert await turn_count(stores.conversations) == 5  # a test rollback changes nothing live

    result = await roll_back(backups, snapshot_id)
    assert result.components == ("conversations",)
    assert {"safety-snapshot", "restore", "verify-and-swap", "drop-old"} <= set(result.step_seconds)
    assert await turn_count(stores.conversations) == 3
    assert [t.message for t in await stored_turns(stores, "u1")] == [
        "message 0",
        "message 1",
        "message 2",
    ]
    # The other components keep what was written after the backup.
    [food] = await stores.budgets.report("u1")
    assert food.limit_cents == 99_999
    profile = await stores.profiles.get("u1")
    assert profile is not None and profile.goal == "endurance"
    assert await stores.system_state.get("mode") == {"round": 2}

    # The state before the rollback is in restic, and the restored table goes on numbering.
    safety = await restic.snapshots(tag="reason:pre-rollback")
    assert [s["short_id"] for s in safety] == [result.safety_snapshot_id[:8]]
    assert "component:conversations" in safety[0]["tags"]
    # Its record, after the swap: what it put aside is passed over by a later rollback.
    [record] = await restic.snapshots(tag="ers-rollback")
    assert {f"restores:{snapshot_id}", "rolled-back:conversations"} <= set(record["tags"])
    assert await record_turn(stores, turn(9)) == 4
    assert leftovers(pg_url) == ([], [])


async def test_a_failing_pg_dump_raises_a_named_error_without_the_password(
    restic: Restic, stores: Stores, pg_url: str
) -> None:
    password = urlsplit(pg_url).password
    assert password
    wrong = urlunsplit(urlsplit(pg_url)._replace(path="/no_such_database"))
    backups = BackupManager(restic, config_for(stores, wrong))
    conninfo = backups.backend.database.conninfo  # type: ignore[attr-defined]
    assert password not in conninfo  # what reaches pg_dump's command line

    with pytest.raises(PgDumpFailed) as failure:
        await backups.create(["budgets"], "manual")
    message = str(failure.value)
    assert password not in message
    assert "no_such_database" in message and "ERS_DATABASE_URL" in message
    assert await restic.snapshots() == []  # restic was stopped before it saved anything


async def test_a_database_the_password_file_has_no_line_for_is_said_with_the_fix(
    restic: Restic, stores: Stores, pg_url: str, tmp_path: Path
) -> None:
    """The fleet's URL names no password but a libpq password file. Before, a line there
    that did not cover the database was met with "see the PostgreSQL server log", which
    says nothing of it: the server only logs that no password came."""
    parts = urlsplit(pg_url)
    assert parts.password, "the test server's URL carries a password"
    host, port, user = parts.hostname, parts.port or 5432, parts.username
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"{host}:{port}:another_database:{user}:{parts.password}\n")
    passfile.chmod(0o600)
    url = urlunsplit(parts._replace(netloc=f"{user}@{host}:{port}", query=f"passfile={passfile}"))
    backups = BackupManager(restic, config_for(stores, url))

    with pytest.raises(PgDumpFailed) as failure:
        await backups.create(["budgets"], "manual")
    message = str(failure.value)
    assert "no password supplied" in message, message
    assert "passfile names whose database is *" in message, message
    assert "server log" not in message and parts.password not in message


async def test_a_full_backup_that_fails_for_one_component_names_the_snapshots_it_made(
    restic: Restic, stores: Stores, pg_url: str
) -> None:
    """Before: only pg_dump's lock timeout was said, with advice to see the server's log,
    and the snapshots of the three other components went unmentioned."""
    config = dataclasses.replace(config_for(stores, pg_url), lock_wait_seconds=0.5)
    backups = BackupManager(restic, config)
    await set_limit(stores, "u1", "food", 40_000)
    with psycopg.connect(pg_url) as holder:  # a schema change, holding the budgets tables
        holder.execute("LOCK TABLE ers_budgets.budgets IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(PgDumpFailed) as failure:
            await backups.create(None, "manual", skip_unchanged=False)
    message = str(failure.value)

    assert message.startswith("the backup of budgets failed: pg_dump failed dumping schema ")
    assert "canceling statement due to statement timeout" in message
    assert "long transaction holds the tables: retry when it has ended" in message
    made = {
        s["id"][:8]: t.removeprefix("component:")
        for s in await restic.snapshots()
        for t in s["tags"]
        if t.startswith("component:")
    }
    assert sorted(made.values()) == sorted(c for c in stores.by_component() if c != "budgets")
    kept = message.split("; the snapshots of the others were made and kept: ", 1)[1]
    assert sorted(kept.split(", ")) == sorted(f"{i} ({c})" for i, c in made.items())


async def test_a_server_not_reached_is_not_said_to_have_left_scratch_databases(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: "could not drop the scratch databases a stopped test rollback left", though
    none was there to drop; the failure to connect is said by what runs next."""
    wrong = urlunsplit(urlsplit(pg_url)._replace(path="/no_such_database"))
    assert await drop_abandoned_scratch_databases(PgConnection.from_url(wrong)) == []
    assert "scratch" not in caplog.text


async def test_live_sizes_are_each_component_schemas_bytes_and_fail_in_plain_words(
    restic: Restic, stores: Stores, pg_url: str, backups: BackupManager
) -> None:
    await record_turn(stores, turn(1))
    sizes = await backups.backend.live_sizes()
    assert set(sizes) == set(stores.by_component())
    assert sizes["conversations"] > 0

    password = urlsplit(pg_url).password
    assert password
    wrong = urlunsplit(urlsplit(pg_url)._replace(path="/no_such_database"))
    with pytest.raises(BackupError) as failure:
        await BackupManager(restic, config_for(stores, wrong)).backend.live_sizes()
    message = str(failure.value)
    assert message.startswith("reading the schemas' sizes at ")
    assert "no_such_database" in message and password not in message


async def test_a_truncated_dump_fails_the_rollback_and_leaves_the_live_schema_alone(
    backups: BackupManager, stores: Stores, restic: Restic, pg_url: str, tmp_path: Path
) -> None:
    await record_turns(stores, 0, 2000, text="x" * 200)
    good = await backups.create(["conversations"])
    assert good.snapshot_id is not None
    whole = tmp_path / "whole.pgdump"
    with whole.open("wb") as out:
        await restic.dump(good.snapshot_id, "/conversations.pgdump", stdout=out.fileno())
    cut = tmp_path / "cut.pgdump"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    with cut.open("rb") as source:
        tags = [*tags_for(["conversations"], "manual"), POSTGRES_TAG]
        summary = await restic.backup_stdin(source.fileno(), "conversations.pgdump", tags=tags)
    await record_turns(stores, 2000, 5)

    with pytest.raises(RollbackFailed) as failure:
        await roll_back(backups, str(summary["snapshot_id"]))
    assert failure.value.step == "restore"
    assert "left unchanged" in str(failure.value)
    assert await turn_count(stores.conversations) == 2005
    assert await restic.snapshots(tag="ers-rollback") == []  # nothing was put aside
    assert leftovers(pg_url) == ([], [])


async def test_a_snapshot_without_the_components_dump_is_refused_with_nothing_changed(
    backups: BackupManager, stores: Stores, restic: Restic, tmp_path: Path
) -> None:
    """Tagged as a budgets snapshot by hand, holding no /budgets.pgdump: the rollback refuses
    it in the test rollback's words, and counts as no failed rollback. Before: its restore
    failed (a 503 and an incident over HTTP)."""
    await set_limit(stores, "u1", "food", 40_000)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a dump\n")
    with notes.open("rb") as source:
        tags = [*tags_for(["budgets"], "manual"), POSTGRES_TAG]
        summary = await restic.backup_stdin(source.fileno(), "notes.txt", tags=tags)
    hand_made = str(summary["snapshot_id"])
    await backups.refresh()
    events: list[object] = []
    backups.subscribe(events.append)

    @contextlib.asynccontextmanager
    async def pause() -> AsyncIterator[None]:
        yield

    with pytest.raises(RollbackRefused) as tested:
        await backups.test_rollback(hand_made)
    with pytest.raises(RollbackRefused) as refused:
        await backups.rollback(hand_made, None, "manual", pause, lambda: None)
    assert str(refused.value) == str(tested.value)
    assert str(refused.value) == f"snapshot {hand_made[:8]} holds no /budgets.pgdump: pick another"
    assert not [e for e in events if isinstance(e, RollbackFinished)]  # no failed rollback
    [food] = await stores.budgets.report("u1")
    assert food.limit_cents == 40_000


async def test_readers_during_the_swap_see_the_old_or_the_new_table_never_a_missing_one(
    backups: BackupManager, stores: Stores, pg_url: str
) -> None:
    await record_turns(stores, 0, 200)
    snapshot = await backups.create(["conversations"])
    assert snapshot.snapshot_id is not None
    await record_turns(stores, 200, 300)

    seen: list[int] = []
    rollback = asyncio.ensure_future(roll_back(backups, snapshot.snapshot_id))
    # A pooled store reader and a raw connection whose statement is server-side prepared.
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        deadline = time.monotonic() + 120
        reads_after = 0
        while reads_after < 20 and time.monotonic() < deadline:
            if rollback.done():
                reads_after += 1
            seen.append(await turn_count(stores.conversations))
            cursor = await conn.execute(
                "SELECT count(*) FROM ers_conversations.turns", prepare=True
            )
            row = await cursor.fetchone()
            assert row is not None
            seen.append(int(row[0]))
            await asyncio.sleep(0.005)
    await rollback
    assert set(seen) <= {500, 200}
    assert seen[0] == 500 and seen[-1] == 200
    assert len(seen) > 40


async def test_another_replicas_writes_during_a_rollback_are_in_the_safety_snapshot_or_live(
    backups: BackupManager, stores: Stores, pg_url: str
) -> None:
    # A rollback pauses the writers of its own process; another replica on the same database
    # keeps writing. Each of its acknowledged writes must end up in the safety snapshot (it
    # came before) or in the restored schema (it came after), never in neither.
    before = await backups.create(["budgets"])
    assert before.snapshot_id is not None
    acknowledged = 0
    rollback_done = asyncio.Event()

    async def other_replica() -> None:
        nonlocal acknowledged
        async with opened(Stores.on_postgres(pg_url)) as other:
            after_rollback = 0
            while after_rollback < 20:
                with contextlib.suppress(BackupError, OSError):
                    await add_expense(other, "other", "food", 100 + acknowledged)
                    acknowledged += 1
                if rollback_done.is_set():
                    after_rollback += 1

    writer = asyncio.ensure_future(other_replica())
    while acknowledged < 20:
        await asyncio.sleep(0.01)
    try:
        result = await roll_back(backups, before.snapshot_id)
    finally:
        rollback_done.set()
        await writer

    def others() -> int:
        with psycopg.connect(pg_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM ers_budgets.expenses WHERE user_id = 'other'"
            ).fetchone()
        assert row is not None
        return int(row[0])

    live = others()
    await roll_back(backups, result.safety_snapshot_id)
    in_safety = others()
    assert live >= 20 and in_safety >= 20
    assert live + in_safety == acknowledged, (live, in_safety, acknowledged)


# A test rollback in a process of its own, its pg_restore stalled so that it is killed while
# its scratch database exists.
KILLED_TEST_ROLLBACK = """
import asyncio, json, os
from pathlib import Path
from backup.manager import BackupManager
from backup.pg import PgBackupConfig
from backup.repository import RepositoryConfig, open_identified

async def main():
    spec = json.loads(os.environ["ERS_TEST_SPEC"])
    repository = RepositoryConfig(spec["repo"], Path(spec["password"]))
    restic = (await open_identified(repository)).restic
    config = PgBackupConfig(
        spec["schemas"], os.environ["ERS_TEST_PG_URL"], bin_dir=Path(spec["bin"])
    )
    manager = BackupManager(restic, config)
    await manager.refresh()
    await manager.test_rollback(spec["snapshot"])

asyncio.run(main())
"""


def stalled_pg_restore(folder: Path) -> Path:
    """The PostgreSQL client programs, but a pg_restore that never ends."""
    folder.mkdir()
    real = PgTools.find()
    for tool in ("pg_dump", "psql"):
        (folder / tool).symlink_to(getattr(real, tool))
    stalled = folder / "pg_restore"
    stalled.write_text("#!/bin/sh\nexec sleep 600\n")
    stalled.chmod(0o755)
    return folder


async def scratch_databases_appear(url: str) -> list[str]:
    for _ in range(1200):  # bounded: until the test rollback has made its scratch database
        if found := leftovers(url)[1]:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError("no scratch database appeared")


async def test_a_killed_test_rollbacks_scratch_database_is_dropped_at_the_next_start(
    backups: BackupManager, stores: Stores, restic: Restic, pg_url: str, tmp_path: Path
) -> None:
    await record_turns(stores, 0, 3)
    [made] = await backup_each(backups, ["conversations"])
    repository = Path(restic.repository)
    spec = {
        "repo": str(repository),
        "password": str(repository.parent / "password"),
        "schemas": dict(config_for(stores, pg_url).schemas),
        "bin": str(stalled_pg_restore(tmp_path / "bin")),
        "snapshot": made.snapshot_id,
    }
    env = {**os.environ, "ERS_TEST_SPEC": json.dumps(spec), "ERS_TEST_PG_URL": pg_url}
    child = subprocess.Popen([sys.executable, "-c", KILLED_TEST_ROLLBACK], env=env,
                             start_new_session=True)  # fmt: skip
    try:
        [left] = await scratch_databases_appear(pg_url)
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the process and the programs it runs
        child.wait()
    with psycopg.connect(pg_url) as conn:
        for _ in range(1200):  # bounded: until the server has ended the killed sessions
            held = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s",
                (SCRATCH_LOCK_CLASS,),
            ).fetchone()
            if held == (0,):
                break
            time.sleep(0.05)
    assert leftovers(pg_url)[1] == [left]

    await backups.backend.start()  # the service's next start
    # Before: the scratch database, a full copy of the component, stayed on the server.
    assert leftovers(pg_url) == ([], [])


async def test_a_scratch_database_in_use_by_another_replica_is_left_alone(
    backups: BackupManager, stores: Stores, restic: Restic, pg_url: str, tmp_path: Path
) -> None:
    await record_turns(stores, 0, 3)
    [made] = await backup_each(backups, ["conversations"])
    assert made.snapshot_id is not None
    config = config_for(stores, pg_url)
    stalled = dataclasses.replace(config, bin_dir=stalled_pg_restore(tmp_path / "bin"))
    other = BackupManager(restic, stalled)
    await other.refresh()
    previewing = asyncio.create_task(other.test_rollback(made.snapshot_id))
    try:
        in_use = await scratch_databases_appear(pg_url)
        await backups.backend.start()  # another replica starts meanwhile
        assert leftovers(pg_url)[1] == in_use
    finally:
        previewing.cancel()
        with contextlib.suppress(asyncio.CancelledError, BackupError):
            await previewing
    assert leftovers(pg_url) == ([], [])
    preview = await backups.test_rollback(made.snapshot_id)
    assert preview.ok


async def scheduled(backups: BackupManager) -> BackupResult:
    """A scheduled backup: unchanged components are skipped."""
    return await backups.create(["budgets", "profiles"], "scheduled", skip_unchanged=True)


async def test_a_scheduled_backup_skips_a_component_whose_rows_did_not_change(
    backups: BackupManager, stores: Stores, restic: Restic
) -> None:
    """Every scheduled backup on PostgreSQL used to be a snapshot, identical ones too, and
    retention keeps a number of snapshots per component: an idle component's history
    shrank to that many intervals."""
    await set_limit(stores, "u1", "food", 10_000)
    await upsert_profile(stores, "u1", goal="run a marathon")
    first = await scheduled(backups)
    assert sorted(first.components) == ["budgets", "profiles"] and first.skipped == ()

    nothing = await scheduled(backups)  # no row written since
    assert nothing.snapshot_id is None and sorted(nothing.skipped) == ["budgets", "profiles"]

    await add_expense(stores, "u1", "food", 1_250)
    one = await scheduled(backups)
    assert one.components == ("budgets",) and one.skipped == ("profiles",)

    await upsert_profile(stores, "u1", goal="run a half marathon")
    other = await scheduled(backups)
    assert other.components == ("profiles",) and other.skipped == ("budgets",)

    # A full backup is all of the components or none: one changed, all of them again.
    await add_expense(stores, "u1", "food", 300)
    full = await backups.create(None, "scheduled", skip_unchanged=True)
    assert sorted(full.components) == sorted(backups.backend.components), full
    assert (await backups.create(None, "scheduled")).skipped == tuple(backups.backend.components)

    asked = await backups.create(["budgets"], "manual", skip_unchanged=False)
    assert asked.components == ("budgets",)  # one a person asks for is always a snapshot
    snapshots = json.loads((await restic.run(["snapshots", "--json"])).stdout)
    assert len(snapshots) == 2 + 1 + 1 + len(backups.backend.components) + 1


async def test_a_start_does_not_wait_out_a_query_that_reads_a_rollbacks_old_schema(
    stores: Stores, restic: Restic, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A rollback's swapped-out copy of the conversations schema, still read by a report.
    config = dataclasses.replace(config_for(stores, pg_url), lock_wait_seconds=600)
    old = f"{config.schemas['conversations']}__old_0a1b2c3d"
    backups = BackupManager(restic, config)
    with psycopg.connect(pg_url, autocommit=True) as setup:
        setup.execute(f"CREATE SCHEMA {old}")
        setup.execute(f"CREATE TABLE {old}.turns (id int)")
    with psycopg.connect(pg_url) as reader:
        reader.execute(f"SELECT count(*) FROM {old}.turns").fetchone()  # its transaction stays open
        # Before: the start waited the whole lock wait (600 s here, 30 by default) for the
        # report to end, and the service's backups were not ready meanwhile.
        await asyncio.wait_for(backups.backend.start(), 120)
        assert old in leftovers(pg_url)[0]
        assert f"could not drop the old copy of {config.schemas['conversations']}" in caplog.text
        # Said after a start as after a rollback: the next start tries again too.
        assert "it is tried again at the next start and after the next rollback" in caplog.text
    await backups.backend.start()  # the next start, the report over
    assert leftovers(pg_url) == ([], [])


async def test_a_final_backup_cut_by_its_bound_is_told_as_the_bound_as_on_sqlite(
    tmp_path: Path, template_repository: Path, stores: Stores, pg_url: str
) -> None:
    """Before: on PostgreSQL the bound's end was raised as a failed restic command, and the
    log line named the setting only when its words matched the bound's number."""
    shutil.copytree(template_repository / "repo", tmp_path / "repo")
    shutil.copy2(template_repository / "password", tmp_path / "password")
    slow = slow_restic(tmp_path, "backup", seconds=30)
    config = RepositoryConfig(
        str(tmp_path / "repo"), tmp_path / "password", binary=str(slow), cache_dir=tmp_path / "c"
    )
    backups = BackupManager((await open_identified(config)).restic, config_for(stores, pg_url))
    with pytest.raises(ResticTimeout) as cut:  # as restic's own bound on SQLite
        await backups.shutdown_backup(timeout=1.5)
    assert "1.5 s" in str(cut.value), cut.value


async def test_a_repository_that_cannot_be_written_refuses_a_backup_in_its_own_words(
    backups: BackupManager, tmp_path: Path
) -> None:
    """Before: the refusal of each component was said as "the backup of conversations,
    budgets, ... failed: ...", which a rollback's and the health check's refusal of the same
    repository did not share, so the backup's opened an incident of its own."""
    locks = tmp_path / "repo" / "locks"
    done = subprocess.run(["chattr", "+i", str(locks)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this filesystem cannot make folders immutable: {done.stderr.strip()}")
    try:
        with pytest.raises(RepositoryReadOnly) as refused:
            await backups.create(None, "manual")
        assert str(refused.value).startswith("the restic repository"), refused.value
        assert str(refused.value).endswith("then try again"), refused.value
    finally:
        subprocess.run(["chattr", "-i", str(locks)], check=True)
