"""Minimal mode across two replicas sharing one PostgreSQL system_state store, each with its
own connections, state keeper and poll of the fleet's record, as the lifespan wires them: a
replica where the mode is off writes nothing, the mode one turns on reaches the other at its
next read, and an end on either says what it did."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from service.chat.minimal_mode import MinimalMode
from service.resilience.state_keeper import StateKeeper
from service.stores import Stores
from service.stores.base import SystemStateBackend
from service.web.routes.status import end_minimal_mode
from tests.service.test_fleet import eventually
from tests.service.test_state_keeper import Clock, keeping_and_following
from tests.store_writes import opened

KEY = "minimal_mode"


class Replica:
    """One replica's view of the shared store: the writes of the minimal-mode record it
    makes, and, for each read of the fleet's records, whether the mode was on here then."""

    def __init__(self, store: SystemStateBackend, mode: MinimalMode) -> None:
        self.store = store
        self.mode = mode
        self.writes: list[str] = []
        self.on_at_read: list[bool] = []
        # Run once, after a read and before this replica acts on it: another replica's write.
        self.after_read: Callable[[], Awaitable[None]] | None = None
        self.stale_read: int | None = None  # the read after_read ran after

    async def get(self, key: str) -> Any | None:
        return await self.store.get(key)

    async def put(self, key: str, value: Any) -> None:
        if key == KEY:
            self.writes.append("put")
        await self.store.put(key, value)

    async def delete(self, key: str) -> None:
        if key == KEY:
            self.writes.append("delete")
        await self.store.delete(key)

    async def items(self) -> dict[str, Any]:
        self.on_at_read.append(self.mode.active)
        records = await self.store.items()
        if self.after_read is not None:
            after, self.after_read = self.after_read, None
            await after()
            self.stale_read = len(self.on_at_read) - 1
        return records


@contextlib.asynccontextmanager
async def replica(pg_url: str, every_s: float) -> AsyncIterator[tuple[Replica, StateKeeper]]:
    async with opened(Stores.on_postgres(pg_url)) as stores:
        mode = MinimalMode()
        shared = Replica(stores.system_state, mode)
        async with keeping_and_following(shared, {KEY: mode}, Clock(), every_s) as keeper:
            yield shared, keeper


async def test_an_idle_replica_leaves_the_record_alone_and_takes_it_at_its_next_read(
    pg_url: str,
) -> None:
    """Each read of a replica where the mode was off deleted the fleet's record: one the
    other replica's responder wrote just after that read was erased (the mode then ended
    there too), and the delete held the reads after it off, so the mode took two polls."""
    async with replica(pg_url, 0.05) as (a, a_keeper), replica(pg_url, 0.05) as (b, _):
        await eventually(lambda: len(b.on_at_read) >= 3, 10, "the idle replica's reads")

        async def responder_on_a() -> None:
            a.mode.enter(600, "critical failure of the budget agent", "INC_1_ab12cd")
            await a_keeper.flush()

        b.after_read = responder_on_a  # b read the fleet's records just before
        await eventually(lambda: b.stale_read is not None, 10, "a's write after b's read")
        stale = b.stale_read
        assert stale is not None
        await eventually(lambda: len(b.on_at_read) >= stale + 3, 10, "b's next reads")

        assert b.on_at_read[stale] is False
        assert b.on_at_read[stale + 2] is True  # the first read after a's write took it
        assert b.mode.incident == "INC_1_ab12cd"
        assert (await b.store.get(KEY))["incident"] == "INC_1_ab12cd"
        assert a.mode.active
        assert b.writes == []  # neither deletes while off nor puts back what it followed
        assert a.writes == ["put"]


async def test_an_end_on_a_replica_the_mode_has_not_reached_yet_ends_it_everywhere(
    pg_url: str,
) -> None:
    """`ers minimal-mode end` on a replica that had not followed the record yet answered
    "was not on; nothing to end", while its delete went on to end the fleet's mode."""
    async with replica(pg_url, 0.05) as (a, a_keeper), replica(pg_url, 600) as (b, b_keeper):
        a.mode.enter(600, "critical failure of the budget agent", "INC_1_ab12cd")
        await a_keeper.flush()
        assert not b.mode.active  # its next read is minutes away

        reply = await end_minimal_mode(b.mode, b_keeper, "admin:token")
        assert reply["ended"] is True and reply["saved"] is True
        assert reply["message"] == "minimal response mode ended: chat calls the agents again"
        assert await b.store.get(KEY) is None
        await eventually(lambda: not a.mode.active, 10, "the end on the replica that began it")

        again = await end_minimal_mode(b.mode, b_keeper, "admin:token")
        assert again["ended"] is False
        assert again["message"] == "minimal response mode was not on; nothing to end"
        assert b.writes == ["delete"] and a.writes == ["put"]  # nothing on anywhere: no write
