"""Chat turns committed together on PostgreSQL (group commit).

Under load many chats finish their agents' work within the same few milliseconds, and each
would send the INSERT of its turn alone: one round trip, one transaction and one commit per
chat, paid by the replica, by PostgreSQL and, with ``synchronous_commit``, by the disk. A
unit that stores only a turn (no agent writes, no idempotency key) is queued here instead;
one flush inserts every turn queued meanwhile in one statement, one transaction, and each
chat gets its own row's id once that commit is done: a reply is still sent only for a turn
that is stored. Nothing is held back for company: the first turn after a quiet spell is
sent at once, and only turns that arrive while a flush is in flight wait for the next one.

A batch PostgreSQL refuses (and so rolled back) is tried again turn by turn, so a turn it
cannot store fails only its own chat. Any other failure (no connection, or one lost while
the batch ran, when its commit may or may not have gone through) fails the batch's chats
at once, as it would a lone turn's: nothing is stored twice. A chat cancelled before its
turn was sent writes nothing, as before.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging

from service.errors import StatementRefused, StoreUnavailable
from service.stores.base import ChatTurn
from service.stores.postgres import PostgresStore
from service.stores.unit_of_work import TURN_COLUMNS, turn_values

log = logging.getLogger("ers.stores")

# Turns per statement: a bound on one statement's size, far above what one replica has in
# flight at once.
MAX_BATCH = 256
# PostgreSQL's type of each turn column, for the arrays the batch is sent as.
_ARRAY_TYPES = ("text", "text", "text", "text", "boolean", "boolean", "text", "float8")

Pending = tuple[ChatTurn, "asyncio.Future[int]"]


def batch_insert(schema: str) -> str:
    """One INSERT of many turns, sent as one array per column. The rows are inserted in
    the order they were queued, so the ids the identity column gives them, sorted, are
    theirs in that order."""
    columns = ", ".join(TURN_COLUMNS)
    arrays = ", ".join(f"?::{kind}[]" for kind in _ARRAY_TYPES)
    return (
        f"INSERT INTO {schema}.turns ({columns}) SELECT {columns}"
        f" FROM unnest({arrays}) WITH ORDINALITY AS queued ({columns}, n)"
        " ORDER BY n RETURNING id"
    )


class TurnBatcher:
    """Inserts the turns of concurrent chats into ``conversations`` together."""

    def __init__(self, conversations: PostgresStore, max_batch: int = MAX_BATCH) -> None:
        self._store = conversations
        self._sql = batch_insert(conversations.schema)
        self._max_batch = max_batch
        self._queue: list[Pending] = []
        self._flusher: asyncio.Task[None] | None = None

    async def record(self, turn: ChatTurn) -> int:
        """Store ``turn``; returns its id once it is committed."""
        loop = asyncio.get_running_loop()
        if self._flusher is not None and self._flusher.get_loop() is not loop:
            # A new event loop (tests run one per test): the old one's flush is gone.
            self._flusher = None
            self._queue.clear()
        future: asyncio.Future[int] = loop.create_future()
        self._queue.append((turn, future))
        if self._flusher is None:
            # A context of its own: the flush serves many chats, not the first one's trace.
            self._flusher = loop.create_task(
                self._flush_queue(), name="turn-batch", context=contextvars.Context()
            )
        return await future

    async def _flush_queue(self) -> None:
        batch: list[Pending] = []
        try:
            while self._queue:
                taken = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                # A chat cancelled while its turn waited: nothing of it is written.
                batch = [item for item in taken if not item[1].done()]
                if batch:
                    await self._flush(batch)
                batch = []
        except BaseException:
            gone = StoreUnavailable(self._store.component, "the store is closing")
            for _, future in [*batch, *self._queue]:
                _fail(future, gone)
            self._queue.clear()
            raise
        finally:
            self._flusher = None

    async def _flush(self, batch: list[Pending]) -> None:
        try:
            ids = await self._insert([turn for turn, _ in batch])
        except Exception as exc:
            if len(batch) == 1 or not isinstance(exc, StatementRefused):
                # No connection, or one lost with the batch's commit unknown: storing the
                # turns again could store them twice. Their chats fail, as a lone turn's.
                for _, future in batch:
                    _fail(future, exc)
                return
            log.info("a batch of %d turns failed (%s); storing them one by one", len(batch), exc)
            results = await asyncio.gather(
                *(self._insert([turn]) for turn, _ in batch), return_exceptions=True
            )
            for (_, future), result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    _fail(future, result)
                else:
                    _done(future, result[0])
            return
        for (_, future), turn_id in zip(batch, ids, strict=True):
            _done(future, turn_id)

    async def _insert(self, turns: list[ChatTurn]) -> list[int]:
        columns = [list(column) for column in zip(*(turn_values(t) for t in turns), strict=True)]
        rows = await self._store.fetch_all(self._sql, columns)
        return sorted(int(row["id"]) for row in rows)


def _done(future: asyncio.Future[int], turn_id: int) -> None:
    if not future.done():
        future.set_result(turn_id)


def _fail(future: asyncio.Future[int], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
