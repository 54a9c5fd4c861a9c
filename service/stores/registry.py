"""All component stores of one service, opened and closed together: SQLite files in the
data directory (the default), or one schema each on a PostgreSQL server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from service.settings import Settings
from service.stores.budgets import BudgetStore
from service.stores.component import Connection
from service.stores.conversations import ConversationStore
from service.stores.pg_connection import server_location
from service.stores.postgres import PostgresDatabase, PostgresStore
from service.stores.profiles import ProfileStore
from service.stores.sqlite import SqliteStore
from service.stores.system_state import SystemStateStore
from service.stores.unit_of_work import KeyPolicy, UnitOfWork
from service.stores.uow_postgres import PgUnitOfWork
from service.stores.uow_sqlite import SqliteUnitOfWork

log = logging.getLogger("ers.stores")

# A component's connection, as health checks, probes and backups see it.
ComponentStore = Connection


@dataclass(frozen=True)
class Stores:
    conversations: ConversationStore
    budgets: BudgetStore
    profiles: ProfileStore
    system_state: SystemStateStore
    # Set when the stores live on PostgreSQL: the server's migrations and connection pool.
    database: PostgresDatabase | None = None
    # How long and how many Idempotency-Keys the unit of work remembers.
    key_policy: KeyPolicy = field(default_factory=KeyPolicy)

    @classmethod
    def from_settings(cls, settings: Settings) -> Stores:
        """SQLite files in ``data_dir``, or PostgreSQL when ``database_url`` is set."""
        policy = KeyPolicy(settings.idempotency_key_ttl_s, settings.idempotency_keys_max)
        if settings.database_url is None:
            return cls.in_directory(settings.data_dir, policy)
        url = settings.database_url.get_secret_value()
        log.info("component stores on PostgreSQL at %s", server_location(url))
        return cls.on_postgres(url, policy)

    @classmethod
    def in_directory(cls, data_dir: Path, key_policy: KeyPolicy | None = None) -> Stores:
        return cls(
            conversations=ConversationStore.in_file(data_dir / "conversations.sqlite3"),
            budgets=BudgetStore.in_file(data_dir / "budgets.sqlite3"),
            profiles=ProfileStore.in_file(data_dir / "profiles.sqlite3"),
            system_state=SystemStateStore.in_file(data_dir / "system_state.sqlite3"),
            key_policy=key_policy or KeyPolicy(),
        )

    @classmethod
    def on_postgres(cls, url: str, key_policy: KeyPolicy | None = None) -> Stores:
        database = PostgresDatabase(url)
        return cls(
            conversations=ConversationStore.on_postgres(database),
            budgets=BudgetStore.on_postgres(database),
            profiles=ProfileStore.on_postgres(database),
            system_state=SystemStateStore.on_postgres(database),
            database=database,
            key_policy=key_policy or KeyPolicy(),
        )

    @cached_property
    def units(self) -> UnitOfWork:
        """Commits a chat turn with its writes, or a profile update, whole or not at all."""
        c, b, p = self.conversations.db, self.budgets.db, self.profiles.db
        if isinstance(c, SqliteStore):
            assert isinstance(b, SqliteStore) and isinstance(p, SqliteStore)
            return SqliteUnitOfWork(c, b, p, self.key_policy)
        assert isinstance(b, PostgresStore) and isinstance(p, PostgresStore)
        return PgUnitOfWork({"budgets": b, "profiles": p, "conversations": c}, self.key_policy)

    def by_component(self) -> dict[str, ComponentStore]:
        """Each component's connection: its SQLite file or its PostgreSQL schema."""
        stores = (self.conversations, self.budgets, self.profiles, self.system_state)
        return {store.component: store.db for store in stores}

    async def open(self) -> None:
        """Open every store: the SQLite files, or migrate PostgreSQL and open its pool."""
        connections = list(self.by_component().values())
        if self.database is None:
            for sqlite in connections:
                assert isinstance(sqlite, SqliteStore)
                sqlite.open()
            return
        pg_stores = [s for s in connections if isinstance(s, PostgresStore)]
        applied = await self.database.open(pg_stores)
        if applied:
            log.info(
                "migrated the PostgreSQL schema: %s",
                ", ".join(f"{component} v{version}" for component, version in applied),
            )

    async def close(self) -> None:
        if self.database is not None:
            await self.database.close()
            return
        for sqlite in self.by_component().values():
            assert isinstance(sqlite, SqliteStore)
            sqlite.close()

    @contextmanager
    def paused(self, components: list[str], reason: str) -> Iterator[None]:
        """Make the named stores fail fast with ``reason`` while their state is swapped
        (SQLite files are closed), then resume them (and reopen the files)."""
        stores = self.by_component()
        with ExitStack() as resumes:  # every store resumes, even when one fails to
            for name in components:
                stores[name].pause(reason)
                resumes.callback(stores[name].resume)
            yield
