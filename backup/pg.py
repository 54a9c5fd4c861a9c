"""Backups of the PostgreSQL state with restic, one schema per component.

When the stores live on PostgreSQL each component has its own schema (`ers_<component>`).
A backup streams `pg_dump --format=custom --schema=<schema>` through a pipe into
`restic backup --stdin`, as the file `/<component>.pgdump` of a snapshot of its own, tagged
`ers`, `component:<name>`, `reason:<reason>` and `backend:postgresql`. The password reaches
pg_dump in its environment, never on its command line (see `backup.pg_tools`); a pg_dump
that fails stops restic before it saves anything (see `backup.pipeline`).

Test rollbacks and rollbacks are in `backup.pg_rollback`; `PgBackups` is the one entry point.
This package knows nothing of the service: it is given the component and schema names.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backup import pg_rollback
from backup.errors import (
    PgDumpFailed,
    RollbackRefused,
    SnapshotNotFound,
    UnknownComponent,
    validate_reason,
)
from backup.index import SnapshotIndex, tags_for
from backup.models import (
    BackupReason,
    BackupResult,
    BackupSummary,
    RollbackPreview,
    RollbackResult,
    Snapshot,
)
from backup.pg_tools import PgConnection, PgTools, run_pg_program
from backup.pipeline import Pipeline
from backup.restic import Restic

POSTGRES_TAG = "backend:postgresql"
# Room for pg_rollback's "__old_<random>" within PostgreSQL's 63-byte names.
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,39}")
_COMPONENT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


@dataclass(frozen=True)
class PgBackupConfig:
    """Which schema holds each component, and how long the programs may take."""

    schemas: Mapping[str, str]  # component name -> its PostgreSQL schema
    timeout_seconds: float = 600.0  # per program: pg_dump, pg_restore, psql, restic
    lock_wait_seconds: float = 30.0  # pg_dump behind a schema change; dropping the old schema
    never_roll_back: frozenset[str] = frozenset({"incidents"})  # backed up, never restored
    bin_dir: Path | None = None  # the PostgreSQL client programs; found when None

    def __post_init__(self) -> None:
        for component, schema in self.schemas.items():
            if not _COMPONENT.fullmatch(component):
                raise UnknownComponent(
                    f"component name '{component}' must be lowercase letters, digits, '-' or '_'"
                )
            if not _SCHEMA.fullmatch(schema):
                raise UnknownComponent(
                    f"schema name '{schema}' of {component} must be at most 40 lowercase "
                    "letters, digits or '_', not starting with a digit"
                )


class PgBackups:
    """Backups, test rollbacks and rollbacks of PostgreSQL component schemas in restic."""

    def __init__(
        self,
        restic: Restic,
        database_url: str,
        config: PgBackupConfig,
        *,
        tools: PgTools | None = None,
    ) -> None:
        self.restic = restic
        self.config = config
        self.database = PgConnection.from_url(database_url)
        self.tools = tools or PgTools.find(config.bin_dir)
        self.index = SnapshotIndex()

    # Snapshots --------------------------------------------------------------------------

    async def refresh(self) -> list[Snapshot]:
        """Reload the PostgreSQL snapshots from the repository; newest first."""
        self.index.replace(await self.restic.snapshots(tag=POSTGRES_TAG))
        return self.index.all()

    def list(self) -> list[Snapshot]:
        return self.index.all()

    async def snapshot(self, snapshot_id: str) -> tuple[Snapshot, str]:
        """The snapshot and the one component it holds; another process may have made it."""
        try:
            snapshot = self.index.get(snapshot_id)
        except SnapshotNotFound:
            await self.refresh()
            snapshot = self.index.get(snapshot_id)
        known = [c for c in snapshot.components if c in self.config.schemas]
        if POSTGRES_TAG not in snapshot.tags or len(known) != 1:
            raise RollbackRefused(
                f"snapshot {snapshot.short_id} is not a PostgreSQL backup of one of "
                f"{', '.join(self.config.schemas)}: pick one made by this backup"
            )
        if known[0] in self.config.never_roll_back:
            raise RollbackRefused(
                f"{known[0]} is never rolled back: it holds the record of what happened"
            )
        return snapshot, known[0]

    # Backup -----------------------------------------------------------------------------

    async def backup(
        self, components: Sequence[str] | None = None, reason: str = BackupReason.MANUAL
    ) -> list[BackupResult]:
        """One snapshot per component (all when None), made side by side; every backup runs
        to its end and the first failure, if any, is raised after."""
        names = list(dict.fromkeys(components or self.config.schemas))
        unknown = [c for c in names if c not in self.config.schemas]
        if unknown:
            raise UnknownComponent(
                f"no PostgreSQL component {', '.join(unknown)}: name one of "
                f"{', '.join(self.config.schemas)}"
            )
        validate_reason(str(reason))
        outcomes = await asyncio.gather(
            *(self.backup_one(c, str(reason)) for c in names), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return [o for o in outcomes if isinstance(o, BackupResult)]

    async def backup_one(self, component: str, reason: str) -> BackupResult:
        schema = self.config.schemas[component]
        started_at, started = datetime.now(UTC), time.monotonic()
        pipeline = Pipeline()
        dump_out, dump_in = pipeline.pipe()
        pipeline.add("pg_dump", self._pg_dump(schema, stdout=dump_in))
        pipeline.add(
            "restic",
            self.restic.backup_stdin(
                dump_out,
                pg_rollback.dump_name(component),
                tags=[*tags_for([component], reason), POSTGRES_TAG],
                timeout=self.config.timeout_seconds,
            ),
        )
        pipeline.hold_open(dump_in, until=["pg_dump"])
        message: dict[str, Any] = (await pipeline.run())["restic"]
        summary = BackupSummary.from_restic(message)
        snapshot_id = str(message["snapshot_id"])
        tags = (*tags_for([component], reason), POSTGRES_TAG)
        self.index.add(
            Snapshot(snapshot_id, snapshot_id[:8], started_at, (component,), reason, tags)
        )
        return BackupResult(
            snapshot_id=snapshot_id,
            reason=reason,
            components=(component,),
            skipped=(),
            started_at=started_at,
            duration_seconds=time.monotonic() - started,
            summary=summary,
            total_size=summary.total_bytes_processed,
        )

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

    async def restic_dump(self, snapshot_id: str, path: str, stdout: int) -> None:
        await self.restic.dump(
            snapshot_id, path, stdout=stdout, timeout=self.config.timeout_seconds
        )

    # Test rollback and rollback (backup.pg_rollback) ------------------------------------

    async def preview(self, snapshot_id: str) -> RollbackPreview:
        """Restore the snapshot into a scratch database (dropped afterwards) and count rows
        per table there and in the live schema; nothing live is touched."""
        snapshot, component = await self.snapshot(snapshot_id)
        return await pg_rollback.preview(self, snapshot, component)

    async def rollback(self, snapshot_id: str, reason: str = "manual") -> RollbackResult:
        """Put the component of `snapshot_id` back as it was (see `backup.pg_rollback`).

        Raises RollbackFailed, naming the step, when anything fails before the commit; the
        live schema is then as it was.
        """
        snapshot, component = await self.snapshot(snapshot_id)
        return await pg_rollback.apply(self, snapshot, component, reason)

    async def drop_leftovers(self) -> list[str]:
        """Drop old schemas that rollbacks could not drop (a reader held them); at start-up."""
        dropped = []
        for schema in self.config.schemas.values():
            dropped += await pg_rollback.drop_old_schemas(self, schema)
        return dropped
