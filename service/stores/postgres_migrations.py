"""Versioned schema migrations for the PostgreSQL stores, safe when replicas start at once.

Each component lists its migrations in order; migration ``n`` (counting from 1) is a tuple
of statements run in one transaction together with its row in ``ers_schema_migrations``.
Every replica runs ``migrate()`` at start; a session advisory lock makes them take turns,
so the first applies what is missing and the others find it recorded and apply nothing.
Migrations are only ever appended: an applied one is never edited.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import psycopg

Migration = Sequence[str]

# pg_advisory_lock key shared by every ERS replica: the bytes of "ERS_MIGR".
MIGRATION_LOCK_KEY = 0x4552_535F_4D49_4752
# How long a starting replica waits for another one's migrations before giving up.
LOCK_WAIT_S = 60

# In ``public``, named in full, so that every replica finds the same ledger whatever its
# search_path.
LEDGER = """CREATE TABLE IF NOT EXISTS public.ers_schema_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL CHECK (version > 0),
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)"""


class MigrationError(Exception):
    """The schema cannot be brought to the version this ERS needs; says why and what to do."""

    def __init__(self, component: str, reason: str) -> None:
        super().__init__(reason)
        self.component = component
        self.reason = reason


async def migrate(
    conn: psycopg.AsyncConnection[object], plan: Mapping[str, Sequence[Migration]]
) -> list[tuple[str, int]]:
    """Apply every migration of ``plan`` not yet recorded; returns (component, version) of
    those this call applied. ``conn`` must be in autocommit mode."""
    if not conn.autocommit:
        raise ValueError("migrate() needs a connection in autocommit mode")
    try:
        await conn.execute(f"SET lock_timeout = '{LOCK_WAIT_S}s'")
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
    except psycopg.errors.LockNotAvailable:
        raise MigrationError(
            "schema",
            f"another ERS replica has held the schema migration lock for over {LOCK_WAIT_S} s; "
            "check for a stuck replica (pg_locks, locktype 'advisory') and restart it",
        ) from None
    try:
        await conn.execute("RESET lock_timeout")
        try:
            await conn.execute(LEDGER)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise MigrationError(
                "schema",
                f"cannot create the migration ledger: {exc.diag.message_primary}; make the ERS "
                "role the owner of the database (ALTER DATABASE … OWNER TO …)",
            ) from None
        applied: list[tuple[str, int]] = []
        for component, migrations in plan.items():
            applied += await _migrate_component(conn, component, migrations)
        return applied
    finally:
        if not conn.closed:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


async def _migrate_component(
    conn: psycopg.AsyncConnection[object], component: str, migrations: Sequence[Migration]
) -> list[tuple[str, int]]:
    cursor = await conn.execute(
        "SELECT version FROM public.ers_schema_migrations WHERE component = %s", (component,)
    )
    done = {row[0] for row in await cursor.fetchall()}  # type: ignore[index]
    newest = max(done, default=0)
    if newest > len(migrations):
        raise MigrationError(
            component,
            f"the {component} schema is at version {newest} but this ERS knows versions up to "
            f"{len(migrations)}; run the newer ERS release (schemas are never migrated down)",
        )
    applied = []
    for version, statements in enumerate(migrations, start=1):
        if version in done:
            continue
        try:
            async with conn.transaction():
                for statement in statements:
                    await conn.execute(statement)  # type: ignore[arg-type]
                await conn.execute(
                    "INSERT INTO public.ers_schema_migrations (component, version) VALUES (%s, %s)",
                    (component, version),
                )
        except psycopg.errors.InsufficientPrivilege as exc:
            raise MigrationError(
                component,
                f"migration {version} of {component} was refused: "
                f"{exc.diag.message_primary}; make the ERS role the owner of the database "
                "(or grant it CREATE on the database)",
            ) from None
        except psycopg.DatabaseError as exc:
            if isinstance(exc, psycopg.OperationalError):
                raise
            raise MigrationError(
                component,
                f"migration {version} of {component} failed: {exc.diag.message_primary}; "
                "nothing of it was applied",
            ) from None
        applied.append((component, version))
    return applied
