"""Writes to the component stores the way the service makes them (through the unit of work),
and the chat turns they stored, read back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import fields, replace
from typing import Any

from service.stores import Stores
from service.stores.base import ChatTurn, Profile
from service.stores.conversations import ConversationStore
from service.stores.unit_of_work import Unit
from service.stores.writes import AddExpense, SetBudgetLimit, UpdateProfile


async def record_turn(stores: Stores, turn: ChatTurn) -> int:
    applied = await stores.units.commit(Unit(turn=turn))
    assert applied.turn_id is not None
    return applied.turn_id


async def turn_count(conversations: ConversationStore) -> int:
    """How many chat turns the store holds."""
    row = await conversations.db.fetch_one(f"SELECT count(*) AS n FROM {conversations.at}.turns")
    assert row is not None
    return int(row["n"])


async def stored_turns(stores: Stores, user_id: str, limit: int = 20) -> list[ChatTurn]:
    """The user's newest stored turns, oldest first (SQLite stores booleans as 0 and 1)."""
    conversations = stores.conversations
    rows = await conversations.db.fetch_all(
        f"SELECT * FROM {conversations.at}.turns WHERE user_id = ? ORDER BY id DESC LIMIT ?",
        (user_id, limit),
    )
    names = [f.name for f in fields(ChatTurn)]
    return [
        replace(
            ChatTurn(**{name: row[name] for name in names}),
            success=bool(row["success"]),
            degraded=bool(row["degraded"]),
        )
        for row in reversed(rows)
    ]


async def set_limit(stores: Stores, user_id: str, category: str, limit_cents: int) -> None:
    await stores.units.commit(Unit([SetBudgetLimit(user_id, category, limit_cents)]))


async def add_expense(
    stores: Stores, user_id: str, category: str, amount_cents: int, note: str = ""
) -> None:
    await stores.units.commit(Unit([AddExpense(user_id, category, amount_cents, note)]))


async def upsert_profile(stores: Stores, user_id: str, **fields: Any) -> Profile:
    """Set the given fields (None leaves one as it was); the profile as stored after."""
    update = UpdateProfile.of(user_id, **fields)
    applied = await stores.units.commit(Unit([update], read_profile=user_id))
    assert applied.profile is not None
    return applied.profile


@asynccontextmanager
async def opened(stores: Stores) -> AsyncIterator[Stores]:
    """The stores opened (PostgreSQL: migrated) for the block, closed after."""
    await stores.open()
    try:
        yield stores
    finally:
        await stores.close()
