"""All component stores of one service, opened and closed together: SQLite files in the
data directory (the default), or one schema each on a PostgreSQL server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from service.settings import Settings, redact_url
from service.stores.budgets import BudgetStore
from service.stores.conversations import ConversationStore
from service.stores.postgres import PostgresDatabase, PostgresStore
from service.stores.postgres_components import (
    PgBudgetStore,
    PgConversationStore,
    PgProfileStore,
    PgSystemStateStore,
)
from service.stores.profiles import ProfileStore
from service.stores.sqlite import SqliteStore
from service.stores.system_state import SystemStateStore
from service.stores.unit_of_work import KeyPolicy, UnitOfWork
from service.stores.uow_postgres import PgUnitOfWork
from service.stores.uow_sqlite import SqliteUnitOfWork

log = logging.getLogger("ers.stores")

ComponentStore = SqliteStore | PostgresStore


@dataclass(frozen=True)
class Stores:
    conversations: ConversationStore | PgConversationStore
    budgets: BudgetStore | PgBudgetStore
    profiles: ProfileStore | PgProfileStore
    system_state: SystemStateStore | PgSystemStateStore
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
        log.info("component stores on PostgreSQL at %s", redact_url(url))
        return cls.on_postgres(url, policy)

    @classmethod
    def in_directory(cls, data_dir: Path, key_policy: KeyPolicy | None = None) -> Stores:
        return cls(
            conversations=ConversationStore(data_dir / "conversations.sqlite3"),
            budgets=BudgetStore(data_dir / "budgets.sqlite3"),
            profiles=ProfileStore(data_dir / "profiles.sqlite3"),
            system_state=SystemStateStore(data_dir / "system_state.sqlite3"),
            key_policy=key_policy or KeyPolicy(),
        )

    @classmethod
    def on_postgres(cls, url: str, key_policy: KeyPolicy | None = None) -> Stores:
        database = PostgresDatabase(url)
        return cls(
            conversations=PgConversationStore(database),
            budgets=PgBudgetStore(database),
            profiles=PgProfileStore(database),
            system_state=PgSystemStateStore(database),
            database=database,
            key_policy=key_policy or KeyPolicy(),
        )

    @cached_property
    def units(self) -> UnitOfWork:
        """Commits a chat turn with its writes, or a profile update, whole or not at all."""
        c, b, p = self.conversations, self.budgets, self.profiles
        if isinstance(c, ConversationStore):
            assert isinstance(b, BudgetStore) and isinstance(p, ProfileStore)
            return SqliteUnitOfWork(c, b, p, self.key_policy)
        assert isinstance(b, PgBudgetStore) and isinstance(p, PgProfileStore)
        return PgUnitOfWork(c, {"budgets": b, "profiles": p, "conversations": c}, self.key_policy)

    def by_component(self) -> dict[str, ComponentStore]:
        return {
            "conversations": self.conversations,
            "budgets": self.budgets,
            "profiles": self.profiles,
            "system_state": self.system_state,
        }

    async def open(self) -> None:
        """Open every store: the SQLite files, or migrate PostgreSQL and open its pool."""
        if self.database is None:
            self.open_all()
            return
        pg_stores = [s for s in self.by_component().values() if isinstance(s, PostgresStore)]
        applied = await self.database.open(pg_stores)
        if applied:
            log.info(
                "migrated the PostgreSQL schema: %s",
                ", ".join(f"{component} v{version}" for component, version in applied),
            )

    async def close(self) -> None:
        if self.database is None:
            self.close_all()
            return
        await self.database.close()

    def open_all(self) -> None:
        """Open the SQLite files (PostgreSQL stores open asynchronously: ``await open()``)."""
        for store in self._sqlite_stores():
            store.open()

    def close_all(self) -> None:
        for store in self._sqlite_stores():
            store.close()

    def _sqlite_stores(self) -> list[SqliteStore]:
        if self.database is not None:
            raise TypeError("the stores live on PostgreSQL: use await open() / await close()")
        return [s for s in self.by_component().values() if isinstance(s, SqliteStore)]

    @contextmanager
    def paused(self, components: list[str], reason: str) -> Iterator[None]:
        """Make the named stores fail fast while their state is swapped, then reopen them."""
        stores = self.by_component()
        with ExitStack() as stack:
            for name in components:
                stack.enter_context(stores[name].paused(reason))
            yield
