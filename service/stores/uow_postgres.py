"""Units of work on PostgreSQL: every component is a schema of one database, so a unit's
statements run in one transaction on one pooled connection and commit together or not at
all, a failed commit included."""

from __future__ import annotations

import time
from typing import Any

from service.stores.base import Profile
from service.stores.postgres import PostgresStore
from service.stores.postgres_components import PgConversationStore
from service.stores.profiles import profile_from_row
from service.stores.unit_of_work import (
    Applied,
    KeyPolicy,
    RememberedReply,
    Unit,
    remembered_from_row,
    remembered_sql,
)


def _profile(row: Any) -> Profile:
    return profile_from_row(row, row["equipment"])


class PgUnitOfWork:
    def __init__(
        self,
        conversations: PgConversationStore,
        stores: dict[str, PostgresStore],
        policy: KeyPolicy,
    ) -> None:
        self._conversations = conversations
        self._stores = stores
        self.policy = policy
        self._names = {name: store.schema for name, store in stores.items()}

    async def remembered(self, scope: str, key: str) -> RememberedReply | None:
        row = await self._conversations.fetch_one(
            remembered_sql(self._conversations.schema).replace("?", "%s"),
            (scope, key, time.time() - self.policy.ttl_s),
        )
        return remembered_from_row(row) if row is not None else None

    async def commit(self, unit: Unit) -> Applied:
        components = unit.components()
        if not components:
            return Applied()
        for name in components:
            self._stores[name].check_usable()
        # Errors are reported for the store that runs the transaction: one database holds
        # them all.
        runner = self._stores[components[-1]]
        return await runner.commit_unit(unit, self._names, self.policy, _profile)
