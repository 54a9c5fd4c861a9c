"""Rollback of a PostgreSQL component through BackupManager against a bare pg_restore, side by side.

A throwaway PostgreSQL cluster (as the tests start one, see tests/pg.py) gets about 100 MB in
one component schema (the real conversations store, filled with INSERT … SELECT
generate_series). The library backs it up into restic once; `restic dump` writes that dump to
a file once. Then, in alternating order each round, with a CHECKPOINT before each timed
operation so neither side pays for the other's dirty pages: (a) `BackupManager.rollback` of the
component to that snapshot (safety backup, restic dump, restore in one transaction, swap,
drop of the old schema), (b) a bare `pg_restore` of the file into a fresh database. For
scale, each round also times `restic dump` of the snapshot to /dev/null: the part of (a) that
restic alone takes (its key derivation included).

The anchor is what an operator would do by hand for the same result, also timed in every
round (the three sides take turns going first): first a safety copy of the live schema,
``pg_dump --format=custom --compress=0 --schema=… | restic backup --stdin`` (the same dump
flags the library uses), then ``restic dump <snapshot> /conversations.pgdump | pg_restore
--clean --if-exists --single-transaction`` over the live schema. One after the other, as by
hand: the copy must exist before the schema is replaced.

Medians are compared. Printed as ``name=value`` with the anchor's raw numbers on the line
above: ``pg_rollback_vs_restore_ratio`` (rollback over the bare pg_restore into a fresh
database, kept for reference: its old target of <= 1.5 set a rollback against work it does
not do) and last ``pg_rollback_vs_manual`` (rollback
over the operator's two commands; target <= 1.1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg

from backup import BackupManager, PgBackupConfig
from backup.pg_tools import PgConnection, PgTools
from backup.repository import RepositoryConfig, open_identified
from service.stores import Stores
from tests.pg import PostgresServer, postgres_for_tests

COMPONENT = "conversations"
SCHEMA = "ers_conversations"
BATCH_ROWS = 50_000
FILL = """INSERT INTO ers_conversations.turns
    (user_id, message, response, agent, success, degraded, trace_id, created_at)
SELECT 'user-' || (g %% 500), repeat(md5(g::text), 3), repeat(md5((g + 1)::text), 2),
       (ARRAY['nutrition', 'workout', 'budget'])[1 + g %% 3], true, g %% 50 = 0,
       md5((g * 7)::text), 1.7e9 + g
FROM generate_series(%s::bigint, %s::bigint) AS g"""
SCHEMA_BYTES = """SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = %s AND c.relkind = 'r'"""


def fill(url: str, target_bytes: int) -> tuple[int, int]:
    """Rows into the conversations schema until it holds `target_bytes`; (rows, bytes)."""
    rows = 0
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            size = int(conn.execute(SCHEMA_BYTES, (SCHEMA,)).fetchone()[0])  # type: ignore[index]
            if size >= target_bytes:
                break
            conn.execute(FILL, (rows + 1, rows + BATCH_ROWS))
            rows += BATCH_ROWS
        conn.execute("VACUUM (ANALYZE) ers_conversations.turns")
        size = int(conn.execute(SCHEMA_BYTES, (SCHEMA,)).fetchone()[0])  # type: ignore[index]
    return rows, size


def change(url: str, round_number: int) -> None:
    """What happened since the backup: the rollback has rows to take away."""
    start = 10_000_000 + round_number * 1000
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FILL, (start, start + 999))


def checkpoint(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def bare_restore(server: PostgresServer, tools: PgTools, dump: Path) -> float:
    """pg_restore of the dump file into a fresh database; the creation and drop untimed."""
    url = server.create_database()
    target = PgConnection.from_url(url)
    try:
        checkpoint(url)
        started = time.perf_counter()
        subprocess.run(
            [
                tools.pg_restore,
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--no-password",
                f"--dbname={target.conninfo}",
                str(dump),
            ],
            env=target.env(),
            check=True,
            stdin=subprocess.DEVNULL,
        )
        return time.perf_counter() - started
    finally:
        server.drop_database(url)


def by_hand(
    url: str, tools: PgTools, restic: RepositoryConfig, snapshot_id: str
) -> dict[str, float]:
    """The operator's safety copy, then the restore over the live schema; seconds of each.
    Passwords travel in the environment, as the library passes them."""
    target = PgConnection.from_url(url)
    env = {
        **target.env(),
        "RESTIC_REPOSITORY": restic.repository,
        "RESTIC_PASSWORD_FILE": str(restic.password_file),
        "RESTIC_CACHE_DIR": str(restic.cache_dir),
    }
    database = shlex.quote(f"--dbname={target.conninfo}")
    commands = {
        "safety copy": (
            f"{shlex.quote(tools.pg_dump)} --format=custom --compress=0 --schema={SCHEMA} "
            f"--no-password {database} | restic backup --stdin --stdin-filename "
            f"{COMPONENT}.pgdump --tag by-hand --quiet"
        ),
        "restore": (
            f"restic dump --quiet {snapshot_id} /{COMPONENT}.pgdump | "
            f"{shlex.quote(tools.pg_restore)} --clean --if-exists --single-transaction "
            f"--no-owner --no-privileges --exit-on-error --no-password {database}"
        ),
    }
    seconds = {}
    for step, command in commands.items():
        started = time.perf_counter()
        subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            env=env,
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        seconds[step] = time.perf_counter() - started
    return seconds


@contextlib.asynccontextmanager
async def nothing_to_pause() -> AsyncIterator[None]:
    yield


async def restic_dump_alone(backups: BackupManager, snapshot_id: str) -> float:
    with open(os.devnull, "wb") as sink:
        started = time.perf_counter()
        await backups.restic.dump(snapshot_id, f"/{COMPONENT}.pgdump", stdout=sink.fileno())
        return time.perf_counter() - started


async def measure(
    server: PostgresServer, root: Path, size_mb: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    url = server.create_database()
    stores = Stores.on_postgres(url)
    await stores.open()  # the real schemas, as the service migrates them
    await stores.close()
    rows, size = fill(url, size_mb * 1_000_000)

    repository = RepositoryConfig(str(root / "repo"), root / "password", cache_dir=root / "cache")
    restic = (await open_identified(repository, may_create=True)).restic
    schemas = {name: str(store.schema) for name, store in stores.by_component().items()}
    backups = BackupManager(restic, PgBackupConfig(schemas, url))
    tools = backups.backend.tools  # type: ignore[attr-defined]
    started = time.perf_counter()
    backup = await backups.create([COMPONENT], "manual")
    backup_seconds = time.perf_counter() - started
    assert backup.snapshot_id is not None
    dump = root / f"{COMPONENT}.pgdump"
    with dump.open("wb") as out:
        await restic.dump(backup.snapshot_id, f"/{COMPONENT}.pgdump", stdout=out.fileno())

    results: dict[str, list[float]] = {
        "rollback": [],
        "by hand": [],
        "restore": [],
        "restic dump": [],
    }
    steps: dict[str, list[float]] = {}
    sides = ["rollback", "by hand", "restore"]
    for number in range(rounds):
        shift = number % len(sides)
        for side in sides[shift:] + sides[:shift]:
            change(url, number)
            if side == "by hand":
                checkpoint(url)
                manual = await asyncio.to_thread(
                    by_hand, url, tools, repository, backup.snapshot_id
                )
                results["by hand"].append(sum(manual.values()))
                for step, seconds in manual.items():
                    steps.setdefault(f"by hand: {step}", []).append(seconds)
            elif side == "rollback":
                checkpoint(url)
                started = time.perf_counter()
                result = await backups.rollback(
                    backup.snapshot_id, None, "bench", nothing_to_pause, lambda: None
                )
                results["rollback"].append(time.perf_counter() - started)
                for step, seconds in result.step_seconds.items():
                    steps.setdefault(step, []).append(seconds)
            else:
                results["restore"].append(
                    await asyncio.to_thread(bare_restore, server, tools, dump)
                )
        results["restic dump"].append(await restic_dump_alone(backups, backup.snapshot_id))
    facts = {
        "rows": rows,
        "schema_bytes": size,
        "dump_bytes": dump.stat().st_size,
        "backup_seconds": backup_seconds,
    }
    return {**results, **{f"step {k}": v for k, v in steps.items()}}, facts


def report(results: dict[str, list[float]], facts: dict[str, float]) -> float:
    med = {k: statistics.median(v) for k, v in results.items()}
    ratio = med["rollback"] / med["restore"]
    manual = med["rollback"] / med["by hand"]
    print(
        f"schema size: {facts['schema_bytes'] / 1e6:.1f} MB ({facts['rows']:.0f} rows), "
        f"dump: {facts['dump_bytes'] / 1e6:.1f} MB, rounds: {len(results['rollback'])}"
    )
    print(f"BackupManager.create of the component (s): {facts['backup_seconds']:.3f}")
    print(f"{'measure':<34}{'median':>10}{'min':>10}{'max':>10}")
    labels = {
        "rollback": "BackupManager.rollback (s)",
        "restore": "bare pg_restore (s)",
        "by hand": "by hand: safety copy, restore (s)",
        "restic dump": "restic dump to /dev/null (s)",
    }
    for key, values in results.items():
        label = labels.get(key, f"  {key} (s)")
        print(f"{label:<34}{med[key]:>10.4f}{min(values):>10.4f}{max(values):>10.4f}")
    print(
        f"anchor bare pg_restore into a fresh database {med['restore']:.3f} s; "
        f"rollback {med['rollback']:.3f} s"
    )
    print(f"pg_rollback_vs_restore_ratio={ratio:.3f}")
    print(
        f"anchor by hand {med['by hand']:.3f} s (safety copy "
        f"{med['step by hand: safety copy']:.3f} s + restic dump | pg_restore "
        f"{med['step by hand: restore']:.3f} s); rollback {med['rollback']:.3f} s"
    )
    print(f"pg_rollback_vs_manual={manual:.3f}")
    return manual


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    server = postgres_for_tests()
    try:
        with tempfile.TemporaryDirectory(prefix="ers-bench-pg-") as folder:
            results, facts = asyncio.run(measure(server, Path(folder), args.size_mb, args.rounds))
    finally:
        server.stop()
    return report(results, facts)


if __name__ == "__main__":
    main()
