"""Chat turns committed together on PostgreSQL: each chat gets its own row, stored before its
reply, in fewer statements than chats; one refused turn fails only its own chat."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from service.errors import StoreUnavailable
from service.stores import Stores
from service.stores.base import ChatTurn
from service.stores.unit_of_work import Unit
from service.stores.uow_postgres import PgUnitOfWork


def turn(n: int, message: str | None = None) -> ChatTurn:
    return ChatTurn(
        user_id=f"user-{n % 3}",
        message=message if message is not None else f"message {n}",
        response=f"response {n}",
        agent="nutrition" if n % 2 else "router",
        success=n % 5 != 0,
        degraded=n % 7 == 0,
        trace_id=f"{n:032x}" if n % 4 else None,
    )


def stored(url: str) -> dict[int, tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id, user_id, message, response, agent, success, degraded, trace_id"
            " FROM ers_conversations.turns"
        ).fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


def as_row(t: ChatTurn) -> tuple[object, ...]:
    return (t.user_id, t.message, t.response, t.agent, t.success, t.degraded, t.trace_id)


async def test_concurrent_chats_each_get_their_own_row_in_fewer_statements(
    pg_stores: Stores, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    units = pg_stores.units
    assert isinstance(units, PgUnitOfWork)
    turns = [turn(n) for n in range(40)]
    # The statements the conversations schema is sent: each batch of turns is one.
    statements = 0
    db = pg_stores.conversations.db
    fetch_all = db.fetch_all

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal statements
        statements += 1
        return await fetch_all(*args, **kwargs)

    monkeypatch.setattr(db, "fetch_all", counted)

    applied = await asyncio.gather(*(units.commit(Unit(turn=t)) for t in turns))

    rows = stored(pg_url)
    ids = [a.turn_id for a in applied]
    assert len(set(ids)) == len(turns) == len(rows)
    for turn_id, t in zip(ids, turns, strict=True):
        assert turn_id is not None
        assert rows[turn_id] == as_row(t)
    assert 0 < statements < len(turns)


async def test_a_lone_turn_is_stored_before_commit_returns(pg_stores: Stores, pg_url: str) -> None:
    applied = await pg_stores.units.commit(Unit(turn=turn(1)))

    assert applied.turn_id is not None
    assert stored(pg_url) == {applied.turn_id: as_row(turn(1))}


async def test_a_refused_turn_fails_only_its_own_chat(pg_stores: Stores, pg_url: str) -> None:
    # PostgreSQL text refuses NUL characters: the batch holding this turn fails as a whole,
    # and its turns are then stored one by one.
    refused = turn(2, message="nul \x00 inside")
    turns = [turn(1), refused, turn(3), turn(4)]

    results = await asyncio.gather(
        *(pg_stores.units.commit(Unit(turn=t)) for t in turns), return_exceptions=True
    )

    assert isinstance(results[1], StoreUnavailable)
    kept = [r for i, r in enumerate(results) if i != 1]
    rows = stored(pg_url)
    assert len(rows) == 3
    for result, t in zip(kept, [turns[0], *turns[2:]], strict=True):
        assert not isinstance(result, BaseException)
        assert result.turn_id is not None
        assert rows[result.turn_id] == as_row(t)


async def test_a_chat_cancelled_before_its_turn_was_sent_writes_nothing(
    pg_stores: Stores, pg_url: str
) -> None:
    units = pg_stores.units
    first = asyncio.ensure_future(units.commit(Unit(turn=turn(1))))
    cancelled = asyncio.ensure_future(units.commit(Unit(turn=turn(2))))
    await asyncio.sleep(0)  # both queued; the flush has not run yet
    cancelled.cancel()

    applied = await first
    with pytest.raises(asyncio.CancelledError):
        await cancelled

    assert stored(pg_url) == {applied.turn_id: as_row(turn(1))}
