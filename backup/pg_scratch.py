"""Scratch databases for test rollbacks and restore drills, and the ones a dead process left;
the old copies of schemas that rollbacks swapped out.

A test rollback restores a snapshot into a database of its own and drops it afterwards. A
process killed in between (kill -9, the OOM killer, a lost host) cannot drop it, and the
copy, as large as the component, would stay on the server for good. So while a scratch
database lives, a session advisory lock on the live database marks it as in use: the start
of a backend, and each test rollback before it makes its own, drops every scratch database
of this live database whose lock it can take (its user is gone) and leaves the ones another
replica is still using.

Scratch databases are named after the live database (a digest of its name), so a service on
another database of the same server never takes them for its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import AsyncIterator

import psycopg
from psycopg import sql

from backup.errors import BackupError, PgRestoreFailed
from backup.pg_tools import PgConnection

log = logging.getLogger(__name__)

SCRATCH_DATABASE_PREFIX = "ers_scratch_"
OLD_SCHEMA_MARKER = "__old_"  # a rollback's swapped-out schema: <schema>__old_<random>
# The class half of the two-key advisory locks that mark scratch databases in use; the
# other half is the hash of the scratch database's name.
SCRATCH_LOCK_CLASS = 0x45525353  # "ERSS"
_OWNER_TAG = "SELECT left(md5(current_database()), 8)"
_LOCK = "SELECT pg_catalog.pg_try_advisory_lock(%s, hashtext(%s))"
_UNLOCK = "SELECT pg_catalog.pg_advisory_unlock(%s, hashtext(%s))"


@contextlib.asynccontextmanager
async def scratch_database(live: PgConnection) -> AsyncIterator[PgConnection]:
    """A new, empty database on the live one's server, dropped when the block ends; a
    process that dies inside the block leaves it to `drop_abandoned_scratch_databases`."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            holder = await stack.enter_async_context(await live.connect())
            name = f"{SCRATCH_DATABASE_PREFIX}{await _owner_tag(holder)}_{secrets.token_hex(6)}"
            await holder.execute(_LOCK, (SCRATCH_LOCK_CLASS, name))
        except psycopg.Error as exc:
            raise PgRestoreFailed(
                f"creating a scratch database at {live.location} failed: {live.explain(exc)}"
            ) from None
        create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        await live.execute(create, "creating a scratch database (the role needs CREATEDB)")
        try:
            yield live.database(name)
        finally:
            try:
                await live.execute(_drop(name), "dropping the scratch database")
            except PgRestoreFailed as exc:
                log.warning("%s; drop the database %s by hand", exc, name)


async def drop_abandoned_scratch_databases(live: PgConnection) -> list[str]:
    """Drop the scratch databases of `live` that no running process holds; returns their
    names. A failure is logged: the next start tries again."""
    dropped: list[str] = []
    try:
        conn = await live.connect()
    except psycopg.Error:
        return dropped  # no server to look at: what runs next says why, in its own words
    try:
        async with conn:
            pattern = f"^{re.escape(SCRATCH_DATABASE_PREFIX)}{await _owner_tag(conn)}_[0-9a-f]+$"
            cursor = await conn.execute(
                "SELECT datname FROM pg_catalog.pg_database WHERE datname ~ %s", (pattern,)
            )
            for (name,) in await cursor.fetchall():
                taken = await (await conn.execute(_LOCK, (SCRATCH_LOCK_CLASS, name))).fetchone()
                if not (taken and taken[0]):
                    continue  # a test rollback or drill of a running replica
                try:
                    await conn.execute(_drop(str(name)))
                    dropped.append(str(name))
                finally:
                    await conn.execute(_UNLOCK, (SCRATCH_LOCK_CLASS, name))
    except psycopg.Error as exc:
        log.warning(
            "could not drop the scratch databases a stopped test rollback left (%s); "
            "the next start tries again",
            live.explain(exc),
        )
    if dropped:
        log.info("dropped scratch databases an interrupted test rollback left: %s", dropped)
    return dropped


async def drop_old_schemas(live: PgConnection, schema: str, lock_wait_seconds: float) -> list[str]:
    """Drop the old copies of `schema` rollbacks left; one still held by a long query past
    the lock wait is logged and left for the next rollback or start-up."""
    pattern = f"^{schema}{OLD_SCHEMA_MARKER}[0-9a-f]+$"
    dropped: list[str] = []
    try:
        async with await live.connect() as conn:
            await conn.execute(f"SET lock_timeout = {int(lock_wait_seconds * 1000)}")
            cursor = await conn.execute(
                "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname ~ %s", (pattern,)
            )
            for (name,) in await cursor.fetchall():
                drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE")
                await conn.execute(drop.format(sql.Identifier(str(name))))
                dropped.append(str(name))
    except psycopg.Error as exc:
        log.warning(
            "could not drop the old copy of %s (%s); it is tried again at the next start and "
            "after the next rollback",
            schema,
            live.explain(exc),
        )
    return dropped


async def _owner_tag(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> str:
    row = await (await conn.execute(_OWNER_TAG)).fetchone()
    return str(row[0]) if row else ""


def _drop(name: str) -> sql.Composed:
    return sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))


async def swap_committed(database: PgConnection, old: str) -> bool:
    """After an interrupt at a rollback's swap: whether it committed (the old copy of the
    schema is there, seen by others only once committed). A COMMIT psql sent as it was cut
    off may still be landing, so it is asked for up to 2 s; a server that cannot be asked
    raises BackupError: the outcome is not known, and a guess either way would be told as
    the truth."""
    unknown: psycopg.Error | None = None
    for _ in range(10):
        try:
            if await database.schema_exists(old):
                return True
            unknown = None
        except psycopg.Error as exc:
            unknown = exc
        await asyncio.sleep(0.2)
    if unknown is not None:
        raise BackupError(
            f"the rollback was interrupted at its swap, and whether the swap committed cannot"
            f" be read ({type(unknown).__name__}): if the schema {old} is on the server, the"
            " rollback is done (drop it once checked); otherwise the live data is unchanged"
        )
    return False
