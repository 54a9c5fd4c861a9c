"""State stores: one SQLite file per component (or one PostgreSQL schema each, when
``ERS_DATABASE_URL`` is set), each behind one small store class."""

from service.stores.registry import Stores

__all__ = ["Stores"]
