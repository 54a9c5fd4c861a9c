"""The unit of work on both engines: a turn and its writes commit together or not at all,
and a unit applied again (a retry after a commit that failed part way) adds its expense once."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from service.errors import StoreUnavailable
from service.stores import Stores
from service.stores.base import ChatTurn
from service.stores.budgets import BudgetStore, current_month
from service.stores.unit_of_work import ExpenseRecordedBefore, KeyTaken, KeyToRemember, Unit
from service.stores.writes import AddExpense, SetBudgetLimit, UpdateProfile
from tests.store_writes import opened, stored_turns, turn_count


def turn(message: str = "spent $5 on food") -> ChatTurn:
    return ChatTurn("u1", message, "Recorded", "budget", True, False)


WRITES = (
    AddExpense("u1", "food", 500, "spent $5 on food"),
    SetBudgetLimit("u1", "food", 40_000),
    UpdateProfile.of("u1", age=30, equipment=("bands",)),
)


async def test_a_turn_and_its_writes_commit_together(stores: Stores) -> None:
    applied = await stores.units.commit(Unit(WRITES, turn(), turn_key="t1"))
    assert applied.turn_id is not None
    stored = {t.id: t for t in await stored_turns(stores, "u1")}.get(applied.turn_id)
    assert stored is not None and stored.message == "spent $5 on food"
    report = await stores.budgets.report("u1", current_month())
    assert [(r.category, r.limit_cents, r.spent_cents) for r in report] == [("food", 40_000, 500)]
    profile = await stores.profiles.get("u1")
    assert profile is not None and profile.age == 30 and profile.equipment == ("bands",)


async def test_applying_a_unit_again_adds_its_expense_once(stores: Stores) -> None:
    # A commit that failed after the budgets store committed, then the client's retry.
    await stores.units.commit(Unit(WRITES[:1], turn_key="t2"))
    await stores.units.commit(Unit(WRITES, turn(), turn_key="t2"))
    assert (await stores.budgets.report("u1"))[0].spent_cents == 500
    # Another turn's expense of the same amount is its own.
    await stores.units.commit(Unit(WRITES[:1], turn(), turn_key="t3"))
    assert (await stores.budgets.report("u1"))[0].spent_cents == 1000


async def test_a_key_committed_first_by_another_request_takes_nothing_from_the_second(
    stores: Stores,
) -> None:
    key = KeyToRemember("POST /chat", "k", "f", 200, lambda applied: {"turn": applied.turn_id})
    first = await stores.units.commit(Unit(WRITES[:1], turn(), turn_key="a", key=key))
    # Two requests with one key both ran their agents; the second to commit loses whole.
    with pytest.raises(KeyTaken):
        await stores.units.commit(Unit(WRITES, turn(), turn_key="b", key=key))
    assert (await stores.budgets.report("u1"))[0].spent_cents == 500
    assert await stores.profiles.get("u1") is None
    assert await turn_count(stores.conversations) == 1
    remembered = await stores.units.remembered("POST /chat", "k")
    assert remembered is not None and remembered.body == {"turn": first.turn_id}
    assert await stores.units.remembered("PUT /api/profiles", "k") is None


async def test_a_key_used_again_after_its_time_finds_its_expense_recorded(stores: Stores) -> None:
    # Its reply is forgotten, its expense is not: a late retry (a client's queue sent again
    # the next day) adds no second expense.
    ttl = stores.key_policy.ttl_s
    key = KeyToRemember("POST /chat", "k", "f", 200, lambda applied: {})
    long_ago = time.time() - ttl - 60
    await stores.units.commit(Unit(WRITES[:1], turn(), turn_key="t6", key=key, now=long_ago))
    with pytest.raises(ExpenseRecordedBefore):
        await stores.units.commit(Unit(WRITES[:1], turn(), turn_key="t6", key=key))
    months = {current_month(long_ago), current_month()}
    reports = [await stores.budgets.report("u1", month) for month in months]
    assert sum(row.spent_cents for report in reports for row in report) == 500
    assert await turn_count(stores.conversations) == 1


async def test_a_failing_statement_leaves_every_store_as_it_was(stores: Stores) -> None:
    # A negative limit breaks the budgets table's CHECK after the expense was inserted.
    broken = (*WRITES, SetBudgetLimit("u1", "rent", -1))
    with pytest.raises(StoreUnavailable, match="budgets"):
        await stores.units.commit(Unit(broken, turn(), turn_key="t4"))
    assert await stores.budgets.report("u1") == []
    assert await stores.profiles.get("u1") is None
    assert await turn_count(stores.conversations) == 0


async def test_a_paused_store_refuses_the_whole_unit(stores: Stores) -> None:
    with (
        stores.paused(["profiles"], "a rollback is replacing this store"),
        pytest.raises(StoreUnavailable, match="rollback is replacing"),
    ):
        await stores.units.commit(Unit(WRITES, turn(), turn_key="t5"))
    assert await stores.budgets.report("u1") == []
    assert await turn_count(stores.conversations) == 0


async def test_a_file_swapped_by_a_rollback_gets_the_next_units_writes(tmp_path: Path) -> None:
    # The connection that attaches the files is kept between units; a pause must close it,
    # or it would keep writing into the file the rollback replaced.
    stores = Stores.in_directory(tmp_path / "live")
    await stores.open()
    try:
        await stores.units.commit(Unit(WRITES[:1], turn(), turn_key="before"))
        replacement = BudgetStore.in_file(tmp_path / "restored.sqlite3").db
        replacement.open()
        replacement.close()
        with stores.paused(["budgets"], "a rollback is swapping the budgets file"):
            os.replace(replacement.path, stores.budgets.db.path)
        await stores.units.commit(Unit(WRITES[:1], turn(), turn_key="after"))
    finally:
        await stores.close()
    with sqlite3.connect(stores.budgets.db.path) as conn:
        assert conn.execute("SELECT turn_key FROM expenses").fetchall() == [("after",)]


async def test_cleared_profile_fields_are_emptied_and_the_others_kept(stores: Stores) -> None:
    await stores.units.commit(
        Unit((UpdateProfile.of("u1", age=30, goal="lose", equipment=("bands",)),))
    )
    cleared = UpdateProfile.of("u1", ("goal", "equipment"), level="beginner")
    applied = await stores.units.commit(Unit((cleared,), read_profile="u1"))
    profile = await stores.profiles.get("u1")
    assert profile is not None and applied.profile == profile
    assert (profile.age, profile.goal, profile.level, profile.equipment) == (
        30,
        None,
        "beginner",
        (),
    )
    # A profile that did not exist yet starts with the cleared fields empty.
    await stores.units.commit(Unit((UpdateProfile.of("u2", ("sex",), age=41),)))
    new = await stores.profiles.get("u2")
    assert new is not None and (new.age, new.sex) == (41, None)


async def test_a_rollback_of_a_store_forgets_the_replies_of_the_requests_that_wrote_to_it(
    stores: Stores,
) -> None:
    def key(name: str) -> KeyToRemember:
        return KeyToRemember("POST /chat", name, "f", 200, lambda applied: {"reply": name})

    await stores.units.commit(Unit(WRITES[:1], turn(), turn_key="e", key=key("expense")))
    await stores.units.commit(Unit(WRITES[2:], turn(), turn_key="p", key=key("profile")))
    await stores.units.commit(Unit((), turn("how are my muscles"), turn_key="q", key=key("ask")))
    forget_budgets = stores.conversations.replies_forgetting("budgets")
    assert await forget_budgets() == [
        "replies remembered for Idempotency-Keys that wrote to budgets forgotten: 1"
    ]
    assert await stores.units.remembered("POST /chat", "expense") is None
    assert await forget_budgets() == []  # nothing more to forget
    assert await stores.units.remembered("POST /chat", "profile") is not None
    assert len(await stores.conversations.replies_forgetting("profiles")()) == 1
    assert await stores.units.remembered("POST /chat", "profile") is None
    # A reply that wrote nothing tells of no store a rollback changes.
    assert await stores.units.remembered("POST /chat", "ask") is not None
    # A rollback of the conversations store forgets the replies that wrote to either, as
    # its snapshot may bring back ones whose writes a rollback of budgets put aside since.
    await stores.units.commit(Unit(WRITES[:1], turn(), turn_key="e2", key=key("expense2")))
    await stores.units.commit(Unit(WRITES[2:], turn(), turn_key="p2", key=key("profile2")))
    assert await stores.conversations.replies_forgetting("conversations")() == [
        "replies remembered for Idempotency-Keys that wrote to budgets or profiles forgotten: 2"
    ]
    assert await stores.units.remembered("POST /chat", "ask") is not None


async def test_a_reply_remembered_by_an_older_release_is_forgotten_at_any_such_rollback(
    tmp_path: Path,
) -> None:
    # The file as an older release left it: no column for the stores a request wrote.
    with sqlite3.connect(tmp_path / "conversations.sqlite3") as conn:
        conn.execute(
            "CREATE TABLE idempotency_keys (id INTEGER PRIMARY KEY AUTOINCREMENT, scope TEXT"
            " NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, status INTEGER NOT NULL,"
            " body TEXT NOT NULL, created_at REAL NOT NULL, UNIQUE (scope, key))"
        )
        conn.execute(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, status, body, created_at)"
            " VALUES ('POST /chat', 'old', 'f', 200, '{}', ?)",
            (time.time(),),
        )
    conn.close()
    async with opened(Stores.in_directory(tmp_path)) as stores:
        assert await stores.units.remembered("POST /chat", "old") is not None
        # What it wrote is not known: it may be an expense the rollback put aside.
        assert len(await stores.conversations.replies_forgetting("profiles")()) == 1
        assert await stores.units.remembered("POST /chat", "old") is None
