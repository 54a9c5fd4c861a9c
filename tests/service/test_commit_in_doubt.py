"""A PostgreSQL commit whose answer is lost: the server committed, the connection went before
it said so. The unit of work looks for the unit's rows before it answers, so a chat whose
expense is stored is not answered 503 (which asks for a retry that records it again).

The lost answer is made as PostgreSQL makes it with a synchronous standby that never
confirms: the commit is written locally and waits; ending that session drops the connection
with the transaction committed. On a private cluster, as the setting is the server's."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any

import psycopg
import pytest
from opentelemetry import trace
from starlette.requests import Request

from service.agents.budget import BudgetAgent
from service.agents.router import RouterAgent
from service.chat.service import ChatResult, ChatService
from service.chat.team import Team
from service.errors import CommitUnknown, StoreUnavailable
from service.resilience.breaker import BreakerConfig
from service.resilience.guard_config import GuardConfig
from service.stores import Stores, postgres
from service.stores.base import ChatTurn
from service.stores.unit_of_work import KeyTaken, KeyToRemember, Unit
from service.stores.writes import AddExpense, SetBudgetLimit
from service.web.http_errors import store_unavailable
from tests.pg import PostgresServer
from tests.store_writes import opened


def _standby_that_never_answers(url: str, on: bool) -> None:
    # The test cluster runs with synchronous_commit off: on, for the commit to wait.
    settings = {"synchronous_standby_names": "'nobody'", "synchronous_commit": "on"}
    with psycopg.connect(url, autocommit=True) as conn:
        for name, value in settings.items():
            conn.execute(f"ALTER SYSTEM SET {name} = {value if on else 'DEFAULT'}")
        conn.execute("SELECT pg_reload_conf()")


async def _commit_losing_its_answer(stores: Stores, url: str, unit: Unit) -> object:
    return await _losing_its_answer(url, stores.units.commit(unit))


async def _losing_its_answer(
    url: str, committing: Awaitable[object], *, every_session: bool = False
) -> object:
    """Await ``committing`` while commits wait for the standby; end the waiting session
    (with ``every_session``, every session of the database, as a restart does) once the
    commit is written, then let commits through again. Returns what it returned, or the
    exception it raised."""
    _standby_that_never_answers(url, True)
    try:
        pending = asyncio.ensure_future(committing)
        with psycopg.connect(url, autocommit=True) as conn:
            for _ in range(200):
                waiting = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
                ).fetchone()
                if waiting and waiting[0]:
                    ended = "datname = current_database()" if every_session else "false"
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE"
                        f" (wait_event = 'SyncRep' OR {ended}) AND pid <> pg_backend_pid()"
                    )
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the commit never waited for the standby")
    finally:
        _standby_that_never_answers(url, False)
    try:
        return await pending
    except Exception as exc:  # noqa: BLE001 - the outcome under test
        return exc


def _expenses(url: str, user: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ers_budgets.expenses WHERE user_id = %s", (user,)
        ).fetchone()
    return int(row[0]) if row else 0


def _turn(user: str) -> ChatTurn:
    return ChatTurn(user, "spent $5 on food", "Recorded $5.00 for food.", "budget", True, False)


@pytest.fixture
async def private(own_server: PostgresServer) -> tuple[Stores, str]:
    url = own_server.create_database()
    async with opened(Stores.on_postgres(url)) as stores:
        yield stores, url


async def test_a_stored_expense_whose_commit_answer_was_lost_is_answered_as_stored(
    private: tuple[Stores, str],
) -> None:
    stores, url = private
    unit = Unit((AddExpense("u1", "food", 500, "spent $5 on food"),), _turn("u1"), "t-lost")

    outcome = await _commit_losing_its_answer(stores, url, unit)

    assert _expenses(url, "u1") == 1
    # Stored: a 503 here would ask the client to send it again, and record it twice.
    assert not isinstance(outcome, Exception), outcome


async def test_a_stored_expense_is_found_when_every_pooled_connection_was_lost_with_it(
    private: tuple[Stores, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart, or the end of ERS's sessions, takes the pool's other connections with the
    COMMIT's; one used within IDLE_CHECK_S is handed out unchecked (here, any). The server
    is back: the expense can be looked for, and is found, not answered as not known."""
    stores, url = private
    monkeypatch.setattr(postgres, "IDLE_CHECK_S", 3600.0)
    # Each of the pool's connections used once (one never used is checked on checkout).
    conversations = stores.conversations.db
    await asyncio.gather(*(conversations.execute("SELECT pg_sleep(0.2)") for _ in range(3)))
    unit = Unit((AddExpense("u7", "food", 500, "spent $5 on food"),), _turn("u7"), "t-all")

    outcome = await _losing_its_answer(url, stores.units.commit(unit), every_session=True)

    assert _expenses(url, "u7") == 1
    assert not isinstance(outcome, Exception), outcome


async def test_a_keyed_unit_whose_commit_answer_was_lost_is_answered_with_its_reply(
    private: tuple[Stores, str],
) -> None:
    stores, url = private
    key = KeyToRemember("POST /chat", "k-lost", "f", 200, lambda applied: {"ok": True})
    unit = Unit((AddExpense("u2", "food", 500, "spent $5 on food"),), _turn("u2"), "t-k", key=key)

    outcome = await _commit_losing_its_answer(stores, url, unit)

    assert _expenses(url, "u2") == 1
    # The remembered reply answers it: its own, not another request's.
    assert isinstance(outcome, KeyTaken) and outcome.ours, outcome
    remembered = await stores.units.remembered("POST /chat", "k-lost")
    assert remembered is not None and remembered.body == {"ok": True}


async def test_a_keyed_chat_whose_commit_answer_was_lost_is_no_replay(
    private: tuple[Stores, str],
) -> None:
    """Its first answer said `Idempotent-Replayed: true`, as if an earlier send had been
    answered: a client that sent it once would look for a duplicate it never sent."""
    stores, url = private
    team = Team(trace.get_tracer("test"), None, None, BreakerConfig(), GuardConfig())
    team.protect(RouterAgent({"budget": team.protect(BudgetAgent(stores.budgets))}))
    chat = ChatService(team.router, stores.units)

    outcome = await _losing_its_answer(url, chat.chat("spent $5 on food", "u6", key="k-6"))

    assert isinstance(outcome, ChatResult), outcome
    assert _expenses(url, "u6") == 1
    assert "Recorded $5.00 for food" in outcome.body["response"]
    assert not outcome.replayed
    again = await chat.chat("spent $5 on food", "u6", key="k-6")  # the client's retry
    assert again.replayed and again.body == outcome.body
    assert _expenses(url, "u6") == 1


async def test_a_unit_with_nothing_to_find_stays_a_503(private: tuple[Stores, str]) -> None:
    # A budget limit sets a value: its retry sets it again; the 503 asking for one stands.
    stores, url = private
    unit = Unit((SetBudgetLimit("u3", "food", 40_000),), _turn("u3"))

    outcome = await _commit_losing_its_answer(stores, url, unit)

    assert isinstance(outcome, StoreUnavailable), outcome
    assert not isinstance(outcome, CommitUnknown)


async def test_an_expense_that_cannot_be_looked_for_gets_a_503_saying_so(
    private: tuple[Stores, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stores, url = private

    async def unreadable(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("conversations", "the server is gone again")

    monkeypatch.setattr(stores.conversations.db, "fetch_one_anew", unreadable)
    unit = Unit((AddExpense("u4", "food", 500, "spent $5 on food"),), _turn("u4"), "t-u")

    outcome = await _commit_losing_its_answer(stores, url, unit)

    assert _expenses(url, "u4") == 1
    assert isinstance(outcome, CommitUnknown), outcome
    reply = await store_unavailable(Request({"type": "http"}), outcome)
    detail = json.loads(bytes(reply.body))["detail"]
    assert reply.status_code == 503
    assert "try again" not in detail and "whether they were stored cannot be read" in detail
