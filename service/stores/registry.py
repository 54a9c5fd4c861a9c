"""All component stores of one data directory, opened and closed together."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from service.stores.budgets import BudgetStore
from service.stores.conversations import ConversationStore
from service.stores.profiles import ProfileStore
from service.stores.sqlite import SqliteStore
from service.stores.system_state import SystemStateStore


@dataclass(frozen=True)
class Stores:
    conversations: ConversationStore
    budgets: BudgetStore
    profiles: ProfileStore
    system_state: SystemStateStore

    @classmethod
    def in_directory(cls, data_dir: Path) -> Stores:
        return cls(
            conversations=ConversationStore(data_dir / "conversations.sqlite3"),
            budgets=BudgetStore(data_dir / "budgets.sqlite3"),
            profiles=ProfileStore(data_dir / "profiles.sqlite3"),
            system_state=SystemStateStore(data_dir / "system_state.sqlite3"),
        )

    def by_component(self) -> dict[str, SqliteStore]:
        return {
            "conversations": self.conversations,
            "budgets": self.budgets,
            "profiles": self.profiles,
            "system_state": self.system_state,
        }

    def open_all(self) -> None:
        for store in self.by_component().values():
            store.open()

    def close_all(self) -> None:
        for store in self.by_component().values():
            store.close()

    @contextmanager
    def paused(self, components: list[str], reason: str) -> Iterator[None]:
        """Close the named stores while their files are swapped, then reopen them."""
        stores = self.by_component()
        with ExitStack() as stack:
            for name in components:
                stack.enter_context(stores[name].paused(reason))
            yield
