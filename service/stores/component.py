"""What every component store is: one class per concept, written once over the connection
of either engine (``db``), with its schema stated per engine where the DDL differs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Self

from service.stores.postgres import PostgresDatabase, PostgresStore
from service.stores.postgres_migrations import Migration
from service.stores.sqlite import SqliteStore, Upgrade, no_upgrade

Connection = SqliteStore | PostgresStore


class ComponentStore:
    """Subclasses set ``component``, the DDL of its SQLite file (``sqlite_ddl``, plus
    ``sqlite_upgrade`` for files of older releases) and its PostgreSQL migrations
    (``pg_migrations``: append-only, never edit one that has shipped)."""

    component: ClassVar[str]
    sqlite_ddl: ClassVar[Sequence[str]]
    sqlite_upgrade: ClassVar[Upgrade] = staticmethod(no_upgrade)
    pg_migrations: ClassVar[Sequence[Migration]]
    # Idempotent statements that bring a schema restored by a PostgreSQL rollback from a
    # snapshot of an older release up to this one's: the migrations' ledger is not rolled
    # back with it, so they do not run again.
    pg_after_restore: ClassVar[Sequence[str]] = ()

    def __init__(self, db: Connection) -> None:
        self.db = db
        self.dialect = db.dialect
        # Where the component's tables are: ``{self.at}.turns``.
        self.at = db.schema

    async def bring_up_to_date(self) -> None:
        """After a rollback: on PostgreSQL, ``pg_after_restore``; a SQLite file is brought
        up to date as it is reopened (``sqlite_upgrade``)."""
        if isinstance(self.db, PostgresStore):
            for statement in self.pg_after_restore:
                await self.db.execute(statement)

    @classmethod
    def in_file(cls, path: Path) -> Self:
        return cls(SqliteStore(cls.component, path, cls.sqlite_ddl, cls.sqlite_upgrade))

    @classmethod
    def on_postgres(cls, database: PostgresDatabase) -> Self:
        return cls(PostgresStore(database, cls.component, cls.pg_migrations))


def probe_table(schema: str) -> str:
    """The table a PostgreSQL store's health probe writes (SQLite makes its own)."""
    return f"CREATE TABLE {schema}.write_probe (v TEXT NOT NULL)"
