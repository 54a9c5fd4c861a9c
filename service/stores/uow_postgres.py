"""Units of work on PostgreSQL: every component is a schema of one database, so a unit's
statements run in one transaction on one pooled connection and commit together or not at
all, a failed commit included; a commit whose answer was lost with the connection is looked
for by its rows before it is answered. A unit that stores only a chat turn is committed with
the turns of the chats finishing at the same time, in one statement (``turn_batch``)."""

from __future__ import annotations

import logging

from service.errors import CommitUnknown, StoreUnavailable
from service.stores.postgres import PostgresStore
from service.stores.turn_batch import TurnBatcher
from service.stores.unit_of_work import (
    Applied,
    KeyPolicy,
    KeyTaken,
    RememberedReply,
    Unit,
    only_a_turn,
    remembered,
)
from service.stores.writes import AddExpense

log = logging.getLogger("ers.stores")


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
        try:
            return await self._stores[components[-1]].commit_unit(unit, self.policy)
        except CommitUnknown as lost:
            stored = await self._stored(unit, lost)
            if stored is None:
                raise  # the reply says that whether it is stored is not known
            if not stored:
                raise StoreUnavailable(lost.component, lost.reason) from None
        if unit.key is not None:
            # Its reply is remembered with it: the caller answers with that, as its own. (A
            # retry's row is found instead only when this COMMIT rolled back and a retry that
            # waited on its key row committed since: the same request, the same reply.)
            raise KeyTaken(unit.key.scope, unit.key.key, ours=True)
        # Stored: a 503 would ask for a retry that records the expense again.
        return Applied()

    async def _stored(self, unit: Unit, lost: CommitUnknown) -> bool | None:
        """Whether the unit whose COMMIT lost its answer is stored, by the rows only it
        writes: its idempotency key, or its expense's turn key. False when it has neither
        (a budget limit or profile facts: a retry sets them again); None when they cannot
        be read."""
        if unit.key is not None:
            sql = "SELECT 1 FROM ers_conversations.idempotency_keys WHERE scope = ? AND key = ?"
            params: tuple[str, ...] = (unit.key.scope, unit.key.key)
        elif unit.turn_key is not None and any(isinstance(w, AddExpense) for w in unit.writes):
            sql = "SELECT 1 FROM ers_budgets.expenses WHERE turn_key = ?"
            params = (unit.turn_key,)
        else:
            return False
        try:
            # On a new connection: the pool's were most likely lost with the COMMIT's, and
            # the first one handed out would answer "not known" with the server back.
            found = await self._stores["conversations"].fetch_one_anew(sql, params) is not None
        except StoreUnavailable as exc:
            log.error(
                "a unit's commit lost its answer (%s) and whether it is stored cannot be read"
                " (%s): the reply is a 503 that says so; if budgets.expenses holds turn key"
                " %s, it is",
                lost.reason,
                exc.reason,
                unit.turn_key,
            )
            return None
        log.warning(
            "a unit's commit lost its answer (%s); it is %s",
            lost.reason,
            "stored, and answered as such" if found else "not stored: the reply is a 503",
        )
        return found
