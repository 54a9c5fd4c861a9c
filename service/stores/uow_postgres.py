"""Units of work on PostgreSQL: every component is a schema of one database, so a unit's
statements run in one transaction on one pooled connection and commit together or not at
all, a failed commit included. A unit that stores only a chat turn is committed with the
turns of the chats finishing at the same time, in one statement (``turn_batch``)."""

from __future__ import annotations

from service.stores.postgres import PostgresStore
from service.stores.turn_batch import TurnBatcher
from service.stores.unit_of_work import (
    Applied,
    KeyPolicy,
    RememberedReply,
    Unit,
    only_a_turn,
    remembered,
)


class PgUnitOfWork:
    def __init__(self, stores: dict[str, PostgresStore], policy: KeyPolicy) -> None:
        self._stores = stores
        self.policy = policy
        self.turns = TurnBatcher(stores["conversations"])

    async def remembered(self, scope: str, key: str) -> RememberedReply | None:
        return await remembered(self._stores["conversations"], scope, key, self.policy)

    async def commit(self, unit: Unit) -> Applied:
        components = unit.components()
        if not components:
            return Applied()
        for name in components:
            self._stores[name].check_usable()
        if only_a_turn(unit):
            assert unit.turn is not None
            return Applied(turn_id=await self.turns.record(unit.turn))
        # Errors are reported for the store that runs the transaction: one database holds
        # them all.
        return await self._stores[components[-1]].commit_unit(unit, self.policy)
