"""Test rollbacks and rollbacks of a PostgreSQL component: the restoring part of `PgSchemas`.

Test rollback: `restic dump | pg_restore` into a scratch database, dropped afterwards even on
failure (or by the next start or test rollback when its process was killed, see
`backup.pg_scratch`); rows per table are counted there and in the live schema.

Rollback: the safety backup (reason `pre-rollback`) runs beside the restore, and the restore
is ONE transaction on the live database, run by psql:

    rename the live schema to <schema>__old_<random>
    restic dump | pg_restore -f - | psql --single-transaction   (the schema, under its name)
    check: tables present, rows countable
    COMMIT        (only once restic dump, pg_restore and the safety backup all succeeded)

then the old schema is dropped. Other sessions see the old schema until the commit and the
restored one after it, never a missing or half-loaded one; their cached plans are replanned
(a schema rename invalidates them). Anything failing before the commit stops psql, and the
server rolls the transaction back: the live schema is as it was. Other sessions (another
replica's writers, which this process cannot pause) are held off by SHARE locks on the live
tables, taken before the safety backup starts and kept until the commit: their writes wait,
then go into the restored tables, so each is in the safety snapshot or in the live state.

An interrupt (Ctrl-C) after the commit does not hide the rollback: its result is returned,
the old schema left to the next start. (A restore under a new name took twice as long.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from backup.errors import PgRestoreFailed, RollbackFailed, RollbackInProgress, lacking
from backup.models import (
    BackupReason,
    BackupResult,
    ComponentPreview,
    FileVerification,
    RollbackPreview,
    RollbackResult,
    Snapshot,
    TableRows,
)
from backup.pg_scratch import (
    OLD_SCHEMA_MARKER,
    drop_abandoned_scratch_databases,
    drop_old_schemas,
    scratch_database,
    swap_committed,
)
from backup.pg_tools import PgConnection, PgTools, run_pg_program
from backup.pipeline import Pipeline
from backup.restic import Restic
from backup.row_diff import TableRead, changes_between, read_rows

if TYPE_CHECKING:
    from backup.backend import RollbackRequest
    from backup.pg import PgBackupConfig

SafetyBackup = Callable[[str, str], Awaitable[BackupResult]]  # (component, reason)

log = logging.getLogger(__name__)

# The last line of psql's input, which only this process writes, once the dump has been read
# whole and the safety snapshot taken: psql's check before the commit refuses input that
# ended without it. Killed midway, this process leaves restic, pg_restore and psql running;
# pg_restore's end would otherwise let psql commit a rollback whose safety snapshot may never
# finish, with the other replicas' writers no longer held off.
CONFIRMED = "ers.rollback_confirmed"
CONFIRM_LINE = f"\nSELECT pg_catalog.set_config('{CONFIRMED}', 'yes', true);\n".encode()
COUNT_MARKER = "ers-count"
_NOT_THE_DUMP = re.compile(
    r"connection to server|could not connect|connection option|invalid connection|"
    r"password authentication failed|no password supplied|no pg_hba\.conf entry|"
    r"could not translate host name|no space left on device|out of memory|did not finish",
    re.IGNORECASE,
)
# What `restic dump` says of a path the snapshot does not hold.
NOT_IN_SNAPSHOT = "not found in snapshot"
# The class half of the two-key transaction advisory lock a rollback of a schema holds until
# its swap has committed; the other half is the hash of the schema's name.
ROLLBACK_LOCK_CLASS = 0x45525352  # "ERSR"
RESTORE_ARGS = ("--no-owner", "--no-privileges", "--exit-on-error")

_TABLES_SQL = (
    "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
    "ON n.oid = c.relnamespace WHERE n.nspname = '{schema}' AND c.relkind IN ('r', 'p')"
)
# One statement counts every table's rows (query_to_xml runs a query built per row). Schema
# names are checked by PgBackupConfig, so they can be written into the SQL.
_COUNTS_SQL = (
    "SELECT {marker}c.relname, (pg_catalog.xpath('/row/n/text()', pg_catalog.query_to_xml("
    "pg_catalog.format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname), false, true, "
    "'')))[1]::text::bigint FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
    "ON n.oid = c.relnamespace WHERE n.nspname = '{schema}' AND c.relkind IN ('r', 'p') "
    "ORDER BY c.relname"
)


def dump_name(component: str) -> str:
    """The file a component's dump is in a snapshot: restic backup --stdin-filename."""
    return f"{component}.pgdump"


def dump_path(component: str) -> str:
    return f"/{dump_name(component)}"


@dataclass(eq=False, slots=True)
class PgRollback:
    """Restores a component's dump into a scratch database or over its live schema."""

    restic: Restic
    database: PgConnection
    tools: PgTools
    config: PgBackupConfig
    safety_backup: SafetyBackup

    # Test rollback ----------------------------------------------------------------------

    async def preview(
        self, snapshot: Snapshot, names: Sequence[str], *, rows: bool = True
    ) -> RollbackPreview:
        """Restore the snapshot into a scratch database (dropped afterwards) and, with
        ``rows``, compare its rows with the live schema's; nothing live is touched."""
        [component] = names
        schema = self.config.schemas[component]
        path = dump_path(component)
        nodes = await self.restic.ls(snapshot.id)
        sizes = [int(node.get("size", 0)) for node in nodes if node.get("path") == path]
        if not sizes:
            raise lacking(snapshot.short_id, [path])
        then_rows: dict[str, TableRead | None] = {}
        await drop_abandoned_scratch_databases(self.database)  # a killed run's, if any
        async with scratch_database(self.database) as scratch:
            integrity = await self._restore_into_scratch(snapshot.id, path, scratch)
            then = await row_counts(scratch, schema) if integrity == "ok" else {}
            if integrity == "ok" and not then:
                integrity = f"the dump restored no tables into {schema}"
            if then and rows:
                then_rows = await read_rows(scratch, schema, then)
        now = await row_counts(self.database, schema) if rows else {}
        now_rows = await read_rows(self.database, schema, now) if then_rows else {}
        tables = TableRows.between(now, then, changes_between(now_rows, then_rows))
        verification = FileVerification(component, integrity, None, sizes[0])
        previewed = ComponentPreview(component, verification, tables)
        return RollbackPreview(snapshot.id, snapshot.time, snapshot.reason, (previewed,))

    async def _restore_into_scratch(
        self, snapshot_id: str, path: str, scratch: PgConnection
    ) -> str:
        """'ok', or why pg_restore refused the dump; restic's own failures are raised."""
        pipeline = Pipeline()
        dump_out, dump_in = pipeline.pipe()
        pipeline.add("restic dump", self._restic_dump(snapshot_id, path, dump_in))
        restore = self._run(
            self.tools.pg_restore,
            [*RESTORE_ARGS, "--no-password", f"--dbname={scratch.conninfo}"],
            "restoring into a scratch database",
            connection=scratch,
            stdin=dump_out,
        )
        pipeline.add("pg_restore", restore)
        pipeline.hold_open(dump_in, until=["restic dump"])
        try:
            await pipeline.run()
        except PgRestoreFailed as exc:
            if _NOT_THE_DUMP.search(str(exc)):
                raise  # the settings or the server failed pg_restore: not the snapshot's fault
            return str(exc)
        return "ok"

    async def _restic_dump(self, snapshot_id: str, path: str, stdout: int) -> None:
        await self.restic.dump(
            snapshot_id, path, stdout=stdout, timeout=self.config.timeout_seconds
        )

    async def _run(
        self,
        binary: str,
        args: list[str],
        doing: str,
        *,
        connection: PgConnection | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
    ) -> str:
        return await run_pg_program(
            binary,
            args,
            connection=connection or self.database,
            failure=PgRestoreFailed,
            doing=doing,
            timeout=self.config.timeout_seconds,
            stdin=stdin,
            stdout=stdout,
        )

    # Rollback ---------------------------------------------------------------------------

    async def apply(self, request: RollbackRequest) -> RollbackResult:
        """Put the component back as it was in the snapshot (see the module docstring).
        Writers are paused for the whole rollback: what they would write meanwhile would
        land in the schema being replaced; nothing is reopened, the schema is swapped in
        one transaction. Raises RollbackFailed, naming the step, when anything fails before
        the commit; the live schema is then as it was."""
        async with request.pause_writers():
            [component] = request.names
            return await self._apply(request.snapshot, component, request.reason)

    async def _apply(self, snapshot: Snapshot, component: str, reason: str) -> RollbackResult:
        schema = self.config.schemas[component]
        old = f"{schema}{OLD_SCHEMA_MARKER}{secrets.token_hex(4)}"
        started = time.monotonic()
        pipeline = Pipeline()
        try:
            async with self._other_writers_held(component, schema):
                await self._load_with_safety_snapshot(pipeline, snapshot, component, old)
        except asyncio.CancelledError:
            # Interrupted once the swap had committed (psql on its way out, the writers'
            # locks being let go): the rollback is done, and is told as done.
            if "psql" not in pipeline.finished_at and not await swap_committed(self.database, old):
                raise
            _interrupted_after_swap(component)
        done = pipeline.finished_at
        inputs_done = max(done.get("pg_restore", started), done.get("safety-snapshot", started))
        steps = {
            "safety-snapshot": done.get("safety-snapshot", started) - started,
            "restore": done.get("pg_restore", started) - started,
            "verify-and-swap": done.get("psql", time.monotonic()) - inputs_done,
        }
        restored = pipeline.results.get("psql")
        log.info("rolled %s back to %s; rows now: %s", component, snapshot.short_id, restored)
        drop_started = time.monotonic()
        try:
            await self.drop_old_schemas(schema)
        except asyncio.CancelledError:
            _interrupted_after_swap(component)  # the next start drops the old copy
        steps["drop-old"] = time.monotonic() - drop_started
        safety: BackupResult = pipeline.results["safety-snapshot"]
        return RollbackResult(
            snapshot_id=snapshot.id,
            components=(component,),
            reason=reason,
            safety_snapshot_id=safety.snapshot_id or "",
            step_seconds=steps,
            duration_seconds=time.monotonic() - started,
        )

    async def _load_with_safety_snapshot(
        self, pipeline: Pipeline, snapshot: Snapshot, component: str, old: str
    ) -> None:
        """The safety snapshot beside restic dump | pg_restore | psql, whose COMMIT waits
        for both; returns once the swap has committed, else raises (RollbackFailed, or the
        interrupt) with the live schema as it was."""
        schema = self.config.schemas[component]
        dump_out, dump_in = pipeline.pipe()
        sql_out, sql_in = pipeline.pipe()
        pipeline.add("safety-snapshot", self.safety_backup(component, BackupReason.PRE_ROLLBACK))
        pipeline.add("restic dump", self._restic_dump(snapshot.id, dump_path(component), dump_in))
        to_sql = self._run(
            self.tools.pg_restore, [*RESTORE_ARGS, "--file=-"], "reading the dump",
            stdin=dump_out, stdout=sql_in,
        )  # fmt: skip
        pipeline.add("pg_restore", to_sql)
        pipeline.add("psql", self._load_and_swap(schema, old, stdin=sql_out))
        pipeline.hold_open(dump_in, until=["restic dump"])
        # The commit waits for the safety backup too: the current state is in restic first.
        pipeline.hold_open(sql_in, until=["pg_restore", "safety-snapshot"], then=CONFIRM_LINE)
        try:
            await pipeline.run()
        except Exception as exc:
            if pipeline.failed == "restic dump" and NOT_IN_SNAPSHOT in str(exc):
                # Tagged as ERS's by hand: refused, as the test rollback refuses it; the
                # safety snapshot beside it may have been taken, nothing else was done.
                raise lacking(snapshot.short_id, [dump_path(component)]) from None
            step = _failed_step(pipeline)
            if step != "verify-and-swap" or not await swap_committed(self.database, old):
                raise RollbackFailed(step, exc) from exc
            # psql failed after its COMMIT went through (stopped on its way out): done.

    @contextlib.asynccontextmanager
    async def _other_writers_held(self, component: str, schema: str) -> AsyncIterator[None]:
        """Hold off the writes of every other session to `schema` (another replica's, whose
        writers `pause_writers` does not reach) until the swap has committed. SHARE locks let
        readers and the safety backup's pg_dump through; taken before the safety backup
        starts, they make its dump hold every write committed anywhere before the pause. A
        write that waited is planned again once the lock goes, into the restored tables:
        without the lock it would land in the old schema after the safety backup's dump
        and be dropped with it, though its replica had answered that it was stored.
        A rollback of the same schema already running elsewhere (another replica's) is
        refused here, before anything starts: both would rename the live schema, and the
        later one would fail on PostgreSQL's "tuple concurrently updated"."""
        wait_ms = int(self.config.lock_wait_seconds * 1000)
        tables = sql.SQL(_TABLES_SQL.format(schema=schema))
        conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        try:
            conn = await self.database.connect()
            await conn.execute(f"SET lock_timeout = {wait_ms}")
            await conn.execute("BEGIN")
            lock = "SELECT pg_catalog.pg_try_advisory_xact_lock(%s, hashtext(%s))"
            row = await (await conn.execute(lock, (ROLLBACK_LOCK_CLASS, schema))).fetchone()
            if not (row and row[0]):
                await conn.close()
                raise RollbackInProgress(
                    f"a rollback of {component} is already running (on another replica, or "
                    "an `ers backup --offline` command): wait for it to finish, see `ers "
                    "audit` for what it did, then roll back again if still needed"
                )
            names = [str(row[0]) for row in await (await conn.execute(tables)).fetchall()]
            if names:
                each = sql.SQL(", ").join(sql.Identifier(schema, name) for name in names)
                await conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(each))
        except psycopg.Error as exc:
            if conn is not None:
                await conn.close()
            cause = PgRestoreFailed(
                f"holding off other replicas' writes to {schema} at {self.database.location} "
                f"failed: {self.database.explain(exc)}"
            )
            raise RollbackFailed("pause-writers", cause) from None
        try:
            yield
        finally:
            # Closing ends the transaction and its locks, also when COMMIT cannot be sent.
            try:
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("COMMIT")
            finally:
                await conn.close()

    async def _load_and_swap(self, schema: str, old: str, *, stdin: int) -> dict[str, int]:
        """psql: in one transaction, rename the live schema away, run the restore's SQL from
        `stdin`, check the result and commit; returns the restored rows per table."""
        rename = (
            "DO $$ BEGIN IF EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = "
            f"'{schema}') THEN ALTER SCHEMA {schema} RENAME TO {old}; END IF; END $$"
        )
        check = (
            f"DO $$ BEGIN IF current_setting('{CONFIRMED}', true) IS DISTINCT FROM 'yes' THEN "
            "RAISE EXCEPTION 'the restored dump ended without the confirmation of ERS, which "
            "stopped before its safety snapshot was taken: nothing was changed'; END IF; "
            f"IF NOT EXISTS ({_TABLES_SQL.format(schema=schema)}) THEN "
            f"RAISE EXCEPTION 'the snapshot restored no tables into {schema}'; END IF; END $$"
        )
        counts = _COUNTS_SQL.format(marker=f"'{COUNT_MARKER}', ", schema=schema)
        args = ["--no-psqlrc", "--quiet", "--no-align", "--tuples-only", "--field-separator=\t"]
        args += ["--no-password", "--set=ON_ERROR_STOP=1", "--single-transaction"]
        args += [f"--dbname={self.database.conninfo}", "-c", rename, "-f", "-"]
        args += ["-c", check, "-c", counts]
        printed = await self._run(
            self.tools.psql, args, f"loading the dump into {schema}", stdin=stdin
        )
        rows = [line.split("\t") for line in printed.splitlines()]
        return {row[1]: int(row[2]) for row in rows if len(row) == 3 and row[0] == COUNT_MARKER}

    async def drop_old_schemas(self, schema: str) -> list[str]:
        return await drop_old_schemas(self.database, schema, self.config.lock_wait_seconds)


def _interrupted_after_swap(component: str) -> None:
    """Taken, not raised over the result: the rollback is done, and must be told so. The
    stop stays asked for (`backup.lineage.stop_asked`): an automatic rollback ends there."""
    log.warning("interrupted after the rollback of %s had committed: it is done", component)


def _failed_step(pipeline: Pipeline) -> str:
    if pipeline.failed == "safety-snapshot":
        return "safety-snapshot"
    inputs_done = {"pg_restore", "safety-snapshot"} <= set(pipeline.finished_at)
    return "verify-and-swap" if pipeline.failed == "psql" and inputs_done else "restore"


# Statements -----------------------------------------------------------------------------


async def row_counts(connection: PgConnection, schema: str) -> dict[str, int]:
    """Rows per table of `schema` (none when it does not exist)."""
    rows = await connection.execute(
        _COUNTS_SQL.format(marker="", schema=schema), f"counting the rows of {schema}"
    )
    return {str(row[0]): int(str(row[1])) for row in rows}
