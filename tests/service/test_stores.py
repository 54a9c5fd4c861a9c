from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from service.errors import StoreUnavailable
from service.stores import Stores
from service.stores.base import CategoryReport, ChatTurn, Profile
from tests.service.conftest import ReadElsewhere
from tests.store_writes import (
    add_expense,
    record_turn,
    set_limit,
    stored_turns,
    turn_count,
    upsert_profile,
)


async def test_each_component_is_its_own_file_in_wal_mode(
    sqlite_stores: Stores, tmp_path: Path
) -> None:
    stores = sqlite_stores
    for name, store in stores.by_component().items():
        assert store.path == tmp_path / f"{name}.sqlite3"
        assert store.path.exists()
        mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


async def test_conversation_turns_round_trip(stores: Stores) -> None:
    first = await record_turn(
        stores, ChatTurn("u1", "plan my meals", "eat well", "nutrition", True, False, "ab" * 16)
    )
    await record_turn(stores, ChatTurn("u1", "budget", "no budgets", "budget", False, True))
    await record_turn(stores, ChatTurn("u2", "hi", "hello", "router", True, False))
    recent = await stored_turns(stores, "u1")
    assert [t.message for t in recent] == ["plan my meals", "budget"]
    assert recent[1].degraded and not recent[1].success
    assert recent[0].id == first and recent[0].trace_id == "ab" * 16
    assert await turn_count(stores.conversations) == 3


async def test_profile_upsert_keeps_fields_not_given(stores: Stores) -> None:
    await upsert_profile(stores, "u1", age=30, weight_kg=80.0, equipment=("dumbbells",))
    profile = await upsert_profile(stores, "u1", height_cm=180.0)
    assert (profile.age, profile.weight_kg, profile.height_cm) == (30, 80.0, 180.0)
    assert profile.equipment == ("dumbbells",)
    assert await stores.profiles.get("nobody") is None
    with pytest.raises(ValueError, match="unknown profile fields: shoe_size"):
        await upsert_profile(stores, "u1", shoe_size=44)


async def test_budget_report_combines_limits_and_expenses(stores: Stores) -> None:
    await set_limit(stores, "u1", "food", 40000)
    await add_expense(stores, "u1", "food", 2500)
    await add_expense(stores, "u1", "food", 1000)
    await add_expense(stores, "u1", "transport", 700)
    await set_limit(stores, "u1", "food", 50000)
    report = {r.category: r for r in await stores.budgets.report("u1")}
    assert report["food"].limit_cents == 50000
    assert report["food"].spent_cents == 3500
    assert report["food"].left_cents == 46500
    assert report["transport"].limit_cents is None
    assert await stores.budgets.report("u2") == []


async def test_system_state_values_are_json(stores: Stores) -> None:
    await stores.system_state.put("breaker:budget", {"state": "forced_open", "ttl": 30})
    await stores.system_state.put("mode", "normal")
    assert await stores.system_state.get("breaker:budget") == {"state": "forced_open", "ttl": 30}
    assert await stores.system_state.items() == {
        "breaker:budget": {"state": "forced_open", "ttl": 30},
        "mode": "normal",
    }


async def test_paused_store_fails_fast_and_reopens(stores: Stores) -> None:
    with stores.paused(["budgets"], "rollback in progress"):
        with pytest.raises(StoreUnavailable, match="rollback in progress"):
            await set_limit(stores, "u1", "food", 100)
        # Other components keep working while one is paused.
        await upsert_profile(stores, "u1", age=30)
    await set_limit(stores, "u1", "food", 100)
    assert (await stores.budgets.report("u1"))[0].limit_cents == 100


async def test_a_committed_turn_is_seen_at_once_by_another_connection(
    stores: Stores, read_elsewhere: ReadElsewhere
) -> None:
    """A committed turn is stored when the statement returns: without a close or a
    checkpoint (SQLite), and on its own in autocommit (PostgreSQL)."""
    turn_id = await record_turn(stores, ChatTurn("u1", "hello", "hi", "router", True, False))
    seen = read_elsewhere(
        "conversations", "SELECT message FROM {at}.turns WHERE id = ?", (turn_id,)
    )
    assert seen == [("hello",)]
    assert read_elsewhere("conversations", "SELECT count(*) FROM {at}.turns", ()) == [(1,)]


async def test_budget_expense_must_be_positive(stores: Stores) -> None:
    with pytest.raises(StoreUnavailable):
        await add_expense(stores, "u1", "food", 0)
    assert await stores.budgets.report("u1") == []


async def test_budget_report_is_per_month_and_sorted(stores: Stores) -> None:
    await add_expense(stores, "u1", "transport", 700)
    await add_expense(stores, "u1", "Food", 300)
    await set_limit(stores, "u1", "books", 1000)
    report = await stores.budgets.report("u1")
    assert [r.category for r in report] == ["Food", "books", "transport"]
    assert await stores.budgets.report("u1", month="1999-01") == [CategoryReport("books", 1000, 0)]


async def test_recent_turns_are_the_newest_in_order(stores: Stores) -> None:
    ids = [
        await record_turn(
            stores, ChatTurn("u1", f"m{i}", "r", "router", True, False, created_at=1000.5 + i)
        )
        for i in range(5)
    ]
    assert ids == sorted(ids) and len(set(ids)) == 5
    recent = await stored_turns(stores, "u1", limit=3)
    assert [t.message for t in recent] == ["m2", "m3", "m4"]
    assert recent[-1].created_at == 1004.5 and recent[-1].id == ids[-1]
    assert await stored_turns(stores, "nobody") == []


async def test_profile_round_trips_every_field(stores: Stores) -> None:
    fields = {
        "age": 41,
        "weight_kg": 72.5,
        "height_cm": 168.0,
        "sex": "female",
        "activity": "moderate",
        "goal": "maintain",
        "level": "intermediate",
        "equipment": ("bands", "kettlebell"),
    }
    created = await upsert_profile(stores, "u1", **fields)
    assert created == Profile("u1", **fields)
    assert await stores.profiles.get("u1") == created
    emptied = await upsert_profile(stores, "u1", equipment=())
    assert emptied.equipment == () and emptied.age == 41


async def test_system_state_deletes_a_key_and_ignores_a_missing_one(stores: Stores) -> None:
    await stores.system_state.put("breaker:budget", {"state": "disabled"})
    await stores.system_state.put("system", {"state": "degraded"})
    await stores.system_state.delete("breaker:budget")
    await stores.system_state.delete("breaker:nowhere")
    assert await stores.system_state.get("breaker:budget") is None
    assert await stores.system_state.items() == {"system": {"state": "degraded"}}


async def test_system_state_overwrites_and_keeps_json_types(stores: Stores) -> None:
    value = {"list": [1, 2.5, "x", None, True], "nested": {"k": {}}, "unicode": "é✓"}
    await stores.system_state.put("k", value)
    assert await stores.system_state.get("k") == value
    await stores.system_state.put("k", 3)
    assert await stores.system_state.get("k") == 3
    assert await stores.system_state.get("missing") is None


async def test_every_store_passes_the_writable_check_and_its_probe_leaves_no_row(
    stores: Stores, engine: str, read_elsewhere: ReadElsewhere
) -> None:
    probe = "_probe" if engine == "sqlite" else "write_probe"
    for name, store in stores.by_component().items():
        assert store.is_open
        await store.probe_writable()
        assert read_elsewhere(name, f"SELECT count(*) FROM {{at}}.{probe}", ()) == [(0,)]
