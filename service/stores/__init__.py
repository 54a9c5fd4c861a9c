"""State stores: one SQLite file per component (or one PostgreSQL schema each, when
``ERS_DATABASE_URL`` is set), each behind one small store class."""

from service.stores.budgets import BudgetStore
from service.stores.conversations import ConversationStore
from service.stores.profiles import ProfileStore
from service.stores.registry import Stores
from service.stores.system_state import SystemStateStore

__all__ = [
    "BudgetStore",
    "ConversationStore",
    "ProfileStore",
    "Stores",
    "SystemStateStore",
]
