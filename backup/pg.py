"""The PostgreSQL backend: each component is a schema (`ers_<component>`) of one database.

A backup streams `pg_dump --format=custom --schema=<schema>` through a pipe into
`restic backup --stdin`, as the file `/<component>.pgdump` of a snapshot of its own, tagged
`ers`, `component:<name>`, `reason:<reason>` and `backend:postgresql`. The password reaches
pg_dump in its environment, never on its command line (see `backup.pg_tools`); a pg_dump
that fails stops restic before it saves anything (see `backup.pipeline`). A backup of several
components is one snapshot each, made side by side; a rollback names one snapshot and so
restores one component (see `backup.pg_rollback`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg import sql

from backup.backend import BackupRequest, check_component_name
from backup.errors import (
    BackupError,
    PgDumpFailed,
    ResticTimeout,
    RollbackRefused,
    SnapshotNotFound,
    UnknownComponent,
)
from backup.events import BackupFailed, BackupSkipped, BackupSucceeded, EventPublisher
from backup.index import SnapshotIndex, tags_for
from backup.models import (
    BackupResult,
    BackupSummary,
    Snapshot,
)
from backup.pg_rollback import PgRollback, dump_name
from backup.pg_scratch import drop_abandoned_scratch_databases, drop_old_schemas
from backup.pg_tools import PgConnection, PgTools, run_pg_program
from backup.pipeline import Pipeline
from backup.restic import Restic

POSTGRES_TAG = "backend:postgresql"
# How long a start waits for the lock on a rollback's old schema that a query still reads.
START_LOCK_WAIT_SECONDS = 1.0
# Room for pg_rollback's "__old_<random>" within PostgreSQL's 63-byte names.
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,39}")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PgBackupConfig:
    """Which schema holds each component, and how long the programs may take."""

    schemas: Mapping[str, str]  # component name -> its PostgreSQL schema
    database_url: str = field(repr=False)  # carries the password: never printed
    timeout_seconds: float = 600.0  # per program: pg_dump, pg_restore, psql, restic
    lock_wait_seconds: float = 30.0  # pg_dump behind a schema change; dropping the old schema
    never_roll_back: frozenset[str] = frozenset({"incidents"})  # backed up, never restored
    bin_dir: Path | None = None  # the PostgreSQL client programs; found when None

    one_component_per_snapshot = True

    def __post_init__(self) -> None:
        for component, schema in self.schemas.items():
            check_component_name(component)
            if not _SCHEMA.fullmatch(schema):
                raise UnknownComponent(
                    f"schema name '{schema}' of {component} must be at most 40 lowercase "
                    "letters, digits or '_', not starting with a digit"
                )

    def build(self, restic: Restic, index: SnapshotIndex, events: EventPublisher) -> PgSchemas:
        return PgSchemas(restic, self, index, events)


def _partly_made(names: Sequence[str], outcomes: Sequence[object]) -> BaseException:
    """The first failure of a backup of several components, naming the components that
    failed and the snapshots the others made (they are kept: each is whole)."""
    failed = [(n, o) for n, o in zip(names, outcomes, strict=True) if isinstance(o, BaseException)]
    made = [(n, o) for n, o in zip(names, outcomes, strict=True) if isinstance(o, BackupResult)]
    first = failed[0][1]
    # One cause for every component (a repository that cannot be written): said as it is,
    # in the words the same cause has elsewhere (a rollback's refusal, the health check).
    same_cause = not made and {str(o) for _, o in failed} == {str(first)}
    if not isinstance(first, BackupError) or len(names) == 1 or same_cause:
        return first
    which = ", ".join(name for name, _ in failed)
    kept = ", ".join(f"{(o.snapshot_id or '')[:8]} ({name})" for name, o in made)
    first.args = (
        f"the backup of {which} failed: {first}"
        + (f"; the snapshots of the others were made and kept: {kept}" if kept else ""),
    )
    return first


class PgSchemas:
    """Backups, test rollbacks and rollbacks of the component schemas (`BackupBackend`)."""

    tag = POSTGRES_TAG

    def __init__(
        self,
        restic: Restic,
        config: PgBackupConfig,
        index: SnapshotIndex,
        events: EventPublisher,
    ) -> None:
        self.restic = restic
        self.config = config
        self.components = list(config.schemas)
        self.index = index
        self.events = events
        self.database = PgConnection.from_url(config.database_url)
        # Per component, its contents when it was last backed up here, and that snapshot.
        self._signed: dict[str, tuple[str, str]] = {}
        self.tools = PgTools.find(config.bin_dir)
        self.rollback = PgRollback(restic, self.database, self.tools, config, self.backup_one)
        self.preview, self.apply = self.rollback.preview, self.rollback.apply

    async def start(self) -> None:
        """Drop old schemas that rollbacks could not drop (a reader held them), and scratch
        databases whose test rollback or drill was killed. An old schema a query still reads
        is left after a short wait: the start does not wait out the query (the backups are
        not ready until it ends), and the next rollback or start drops it."""
        for schema in self.config.schemas.values():
            await drop_old_schemas(self.database, schema, START_LOCK_WAIT_SECONDS)
        await drop_abandoned_scratch_databases(self.database)

    async def live_sizes(self) -> dict[str, int]:
        """Bytes on disk of each component's schema: its tables with their indexes and
        TOAST data (`pg_total_relation_size`)."""
        by_schema = {schema: name for name, schema in self.config.schemas.items()}
        found = await self.database.execute(
            "SELECT n.nspname, COALESCE(SUM(pg_catalog.pg_total_relation_size(c.oid)), 0)"
            " FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'm', 'p')"
            " GROUP BY n.nspname",
            "reading the schemas' sizes",
            (list(by_schema),),
            failure=BackupError,
        )
        return {by_schema[str(schema)]: int(str(size)) for schema, size in found}

    # Backup -----------------------------------------------------------------------------

    async def take(self, request: BackupRequest) -> BackupResult:
        """One snapshot per component, made side by side; every backup runs to its end and
        the first failure, if any, is raised after. The result names the first snapshot,
        every snapshot with its component, and the summaries added up. With
        ``skip_unchanged``, a component whose contents are those of its last snapshot here
        (still in the repository) is skipped; a ``full`` request skips all or none."""
        names, reason, timeout = request.names, request.reason, request.timeout
        started, started_at = time.monotonic(), datetime.now(UTC)
        # Read before the dumps: a write that lands meanwhile makes the next reading differ.
        looks = await self._contents(names) if request.skip_unchanged else {}
        unchanged = [n for n in names if self._unchanged(n, looks.get(n))]
        if request.full and len(unchanged) < len(names):
            unchanged = []  # a full backup is all of them or none, as with SQLite
        if unchanged and len(unchanged) == len(names):
            holders: set[str | None] = {self._signed[n][1] for n in names}
            result = BackupResult.nothing_changed(
                names, reason, started_at, time.monotonic() - started, holders
            )
            self.events.publish(BackupSkipped(result))
            return result
        names = [n for n in names if n not in unchanged]
        backups = asyncio.gather(
            *(self.backup_one(c, reason) for c in names), return_exceptions=True
        )
        try:
            async with asyncio.timeout(timeout):
                outcomes = await backups
            failures = [o for o in outcomes if isinstance(o, BaseException)]
            if failures:
                raise _partly_made(names, outcomes)
        except (BackupError, TimeoutError) as exc:
            label = "timeout" if isinstance(exc, TimeoutError) else exc.label
            message = str(exc) or f"no backup within {timeout or 0:g} s"
            self.events.publish(
                BackupFailed(tuple(names), reason, label, message, time.monotonic() - started)
            )
            if isinstance(exc, TimeoutError):
                raise ResticTimeout(message) from None
            raise
        results = [o for o in outcomes if isinstance(o, BackupResult)]
        for name, made in zip(names, results, strict=True):
            if looks.get(name) is not None and made.snapshot_id is not None:
                self._signed[name] = (str(looks[name]), made.snapshot_id)
        summaries = [r.summary for r in results if r.summary is not None]
        return dataclasses.replace(
            results[0],
            skipped=tuple(unchanged),
            components=tuple(c for r in results for c in r.components),
            duration_seconds=time.monotonic() - started,
            total_size=sum(r.total_size for r in results),
            summary=BackupSummary.of_all(summaries) if summaries else None,
            made=tuple(p for r in results for p in r.snapshots),
        )

    def _unchanged(self, component: str, contents: str | None) -> bool:
        signed = self._signed.get(component)
        if contents is None or signed is None or signed[0] != contents:
            return False
        return self.index.contains(signed[1])  # forgotten since: a new one is due

    async def _contents(self, names: Sequence[str]) -> dict[str, str | None]:
        """Each component's contents in a few bytes: per table, its rows and the sum of their
        64-bit hashes (in no order, holding no row in memory); equal for equal contents, a
        row changed, added or removed changes it. None when it cannot be read: backed up."""
        found: dict[str, str | None] = {}
        for name in names:
            try:
                found[name] = await self._read_contents(self.config.schemas[name])
            except BackupError as exc:
                found[name] = None
                log.warning("%s is backed up: whether it changed is not known (%s)", name, exc)
        return found

    async def _read_contents(self, schema: str) -> str:
        tables = await self.database.execute(
            "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
            " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'"
            " ORDER BY c.relname",
            f"listing the tables of {schema}",
            (schema,),
            failure=BackupError,
        )
        if not tables:
            return ""
        each = sql.SQL(
            "SELECT {name}, count(*), COALESCE(sum(hashtextextended(t::text, 0)::numeric), 0)"
            " FROM {table} t"
        )
        query = sql.SQL(" UNION ALL ").join(
            each.format(name=sql.Literal(str(table)), table=sql.Identifier(schema, str(table)))
            for (table,) in tables
        )
        rows = await self.database.execute(query, f"reading {schema}", failure=BackupError)
        return ";".join(f"{table}:{count}:{total}" for table, count, total in sorted(rows))

    async def backup_one(self, component: str, reason: str) -> BackupResult:
        schema = self.config.schemas[component]
        started_at, started = datetime.now(UTC), time.monotonic()
        tags = (*tags_for([component], reason), POSTGRES_TAG)
        pipeline = Pipeline()
        dump_out, dump_in = pipeline.pipe()
        pipeline.add("pg_dump", self._pg_dump(schema, stdout=dump_in))
        pipeline.add(
            "restic",
            self.restic.backup_stdin(
                dump_out, dump_name(component), tags=tags, timeout=self.config.timeout_seconds
            ),
        )
        pipeline.hold_open(dump_in, until=["pg_dump"])
        message: dict[str, Any] = (await pipeline.run())["restic"]
        summary = BackupSummary.from_restic(message)
        snapshot_id = str(message["snapshot_id"])
        # restic records this host's name as the snapshot's hostname: the list shows the same
        # before and after it is read back from the repository.
        self.index.add(
            Snapshot(
                snapshot_id,
                snapshot_id[:8],
                started_at,
                (component,),
                reason,
                tags,
                socket.gethostname(),
            )
        )
        result = BackupResult(
            snapshot_id=snapshot_id,
            reason=reason,
            components=(component,),
            skipped=(),
            started_at=started_at,
            duration_seconds=time.monotonic() - started,
            summary=summary,
            total_size=summary.total_bytes_processed,
        )
        self.events.publish(BackupSucceeded(result))
        return result

    async def _pg_dump(self, schema: str, *, stdout: int) -> str:
        args = [
            "--format=custom",
            # Uncompressed: restic compresses, and finds the unchanged parts of the next dump.
            "--compress=0",
            f"--schema={schema}",
            f"--lock-wait-timeout={int(self.config.lock_wait_seconds * 1000)}",
            "--no-password",
            f"--dbname={self.database.conninfo}",
        ]
        return await run_pg_program(
            self.tools.pg_dump,
            args,
            connection=self.database,
            failure=PgDumpFailed,
            doing=f"dumping schema {schema}",
            timeout=self.config.timeout_seconds,
            stdout=stdout,
        )

    # Test rollback and rollback (backup.pg_rollback) ------------------------------------

    def rollback_components(
        self, snapshot: Snapshot, components: Sequence[str] | None
    ) -> list[str]:
        """The one component a PostgreSQL snapshot holds; naming any other is refused."""
        schemas = self.config.schemas
        known = [c for c in snapshot.components if c in schemas]
        if POSTGRES_TAG not in snapshot.tags or len(known) != 1:
            raise RollbackRefused(
                f"snapshot {snapshot.short_id} is not a PostgreSQL backup of one of "
                f"{', '.join(schemas)}: pick one made by this backup"
            )
        component = known[0]
        if component in self.config.never_roll_back:
            raise RollbackRefused(
                f"{component} is never rolled back: it holds the record of what happened"
            )
        others = [c for c in components or () if c != component]
        unknown = [c for c in others if c not in schemas]
        if unknown:
            raise UnknownComponent(
                f"unknown component(s) {', '.join(unknown)}: choose from {', '.join(schemas)}"
            )
        if others:
            raise RollbackRefused(
                f"snapshot {snapshot.short_id} holds {component} only: on PostgreSQL each "
                f"component has snapshots of its own; roll back {', '.join(others)} with one "
                "of theirs"
            )
        return [component]

    def drill_plan(self, index: SnapshotIndex) -> list[tuple[Snapshot, list[str]]]:
        """Each component's newest snapshot, incidents too: never rolled back, its dump is
        still restored into scratch and checked, as the SQLite drill checks its file."""
        plan = []
        for component in self.components:
            snapshot = index.newest_containing([component])
            if snapshot is not None:
                plan.append((snapshot, [component]))
        if not plan:
            raise SnapshotNotFound(
                "there is no PostgreSQL snapshot to verify yet: run a backup first"
            )
        return plan
