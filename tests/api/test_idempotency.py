"""The Idempotency-Key header on /chat and PUT /api/profiles: checked, remembered for a
bounded time and count, replayed, and refused for a different request."""

from __future__ import annotations

import time

import httpx
import pytest
from fastapi import FastAPI

from service.chat.idempotency import turn_key_before
from service.settings import Settings
from service.stores.base import ChatTurn
from service.stores.unit_of_work import KeyToRemember, Unit
from tests.store_writes import turn_count

MAX_KEYS = 3


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"idempotency_keys_max": MAX_KEYS})


async def turns(app: FastAPI) -> int:
    return await turn_count(app.state.runtime.stores.conversations)


@pytest.mark.parametrize(
    ("key", "says"),
    [
        (b"", "is empty"),
        (b"k" * 129, "129 characters long; the limit is 128"),
        ("cl\u00e9".encode("latin-1"), "printable ASCII"),
    ],
)
async def test_a_bad_key_is_refused_with_a_reason(
    client: httpx.AsyncClient, app: FastAPI, key: bytes, says: str
) -> None:
    headers = {"Idempotency-Key": key}
    chat = await client.post("/chat", json={"message": "spent $5 on food"}, headers=headers)
    assert chat.status_code == 422 and says in chat.json()["detail"]
    put = await client.put("/api/profiles/u1", json={"age": 30}, headers=headers)
    assert put.status_code == 422 and says in put.json()["detail"]
    assert await turns(app) == 0
    assert await app.state.runtime.stores.profiles.get("u1") is None


async def test_two_keys_on_one_request_are_refused(client: httpx.AsyncClient, app: FastAPI) -> None:
    # The first was used without a word: which one the client meant is not known.
    headers = [("Idempotency-Key", "k-1"), ("Idempotency-Key", "k-2")]
    chat = await client.post("/chat", json={"message": "spent $5 on food"}, headers=headers)
    assert chat.status_code == 422
    assert "carries 2 Idempotency-Key headers; send exactly one" in chat.json()["detail"]
    put = await client.put("/api/profiles/u1", json={"age": 30}, headers=headers)
    assert put.status_code == 422
    assert await turns(app) == 0


async def test_a_key_of_128_printable_characters_is_accepted(client: httpx.AsyncClient) -> None:
    key = "a ~" + "x" * 125
    reply = await client.post("/chat", json={"message": "hello"}, headers={"Idempotency-Key": key})
    assert reply.status_code == 200


async def test_the_same_key_with_another_request_is_refused(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    headers = {"Idempotency-Key": "k1"}
    assert (await client.post("/chat", json={"message": "hello"}, headers=headers)).is_success
    for body in ({"message": "hello there"}, {"message": "hello", "userId": "someone-else"}):
        refused = await client.post("/chat", json=body, headers=headers)
        assert refused.status_code == 422
        assert "already used for a different request" in refused.json()["detail"]
    assert await turns(app) == 1
    # Keys are per endpoint: the profile update with the same key is its own request.
    assert (await client.put("/api/profiles/u1", json={"age": 40}, headers=headers)).is_success


async def test_only_the_newest_keys_are_remembered(client: httpx.AsyncClient, app: FastAPI) -> None:
    for n in range(MAX_KEYS + 1):
        headers = {"Idempotency-Key": f"key-{n}"}
        assert (await client.post("/chat", json={"message": "hi"}, headers=headers)).is_success
    assert await turns(app) == MAX_KEYS + 1
    # The newest MAX_KEYS replay; the oldest was forgotten and is answered afresh.
    newest = await client.post(
        "/chat", json={"message": "hi"}, headers={"Idempotency-Key": "key-1"}
    )
    assert newest.headers.get("Idempotent-Replayed") == "true"
    assert await turns(app) == MAX_KEYS + 1
    oldest = await client.post(
        "/chat", json={"message": "hi"}, headers={"Idempotency-Key": "key-0"}
    )
    assert "Idempotent-Replayed" not in oldest.headers
    assert await turns(app) == MAX_KEYS + 2


async def test_a_forgotten_keys_expense_is_not_claimed_recorded_again(
    client: httpx.AsyncClient,
) -> None:
    spent = {"message": "spent $1 on groceries", "userId": "u4"}
    first = await client.post("/chat", json=spent, headers={"Idempotency-Key": "E"})
    assert first.status_code == 200 and "Recorded $1.00" in first.json()["response"]
    for n in range(MAX_KEYS):  # newer keys push E out of what is remembered
        await client.post("/chat", json={"message": "hi"}, headers={"Idempotency-Key": f"n{n}"})
    retry = await client.post("/chat", json=spent, headers={"Idempotency-Key": "E"})
    # Before: 200 "Recorded $1.00 ... spent $2.00" with nothing stored.
    assert retry.status_code == 409, retry.text
    assert "recorded by an earlier send with the Idempotency-Key 'E'" in retry.json()["detail"]
    report = await client.post("/chat", json={"message": "budget report", "userId": "u4"})
    assert "spent $1.00" in report.json()["response"]


async def test_another_request_under_a_forgotten_key_is_recorded(
    client: httpx.AsyncClient,
) -> None:
    """A key names one request: once forgotten, another user's expense, or another expense
    of the same user, sent under it is a new request. Both were refused with the 409 that
    says the expense was recorded before, and neither was recorded."""
    first = {"message": "spent $10 on groceries", "userId": "alice"}
    assert (await client.post("/chat", json=first, headers={"Idempotency-Key": "K"})).is_success
    for round_, (user, spent) in enumerate((("bob", "$99 on rent"), ("alice", "$7 on coffee"))):
        for n in range(MAX_KEYS):  # newer keys push K out of what is remembered
            headers = {"Idempotency-Key": f"n{round_}-{n}"}
            await client.post("/chat", json={"message": "hi"}, headers=headers)
        chat = {"message": f"spent {spent}", "userId": user}
        reply = await client.post("/chat", json=chat, headers={"Idempotency-Key": "K"})
        assert reply.status_code == 200, reply.text
        assert "Recorded" in reply.json()["response"]
    bob = await client.post("/chat", json={"message": "budget report", "userId": "bob"})
    assert "spent $99.00" in bob.json()["response"]
    alice = await client.post("/chat", json={"message": "budget report", "userId": "alice"})
    assert "spent $17.00" in alice.json()["response"], alice.json()["response"]


async def test_an_expense_stored_before_turn_keys_named_the_request_is_not_recorded_again(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """Expenses stored before keep the turn key of their Idempotency-Key alone: a retry of
    one, once its key is forgotten, still gets the 409, while another request under the key
    is recorded."""
    budgets = app.state.runtime.stores.budgets
    spent = {"message": "spent $1 on groceries", "userId": "u5"}
    assert (await client.post("/chat", json=spent, headers={"Idempotency-Key": "O"})).is_success
    # As the earlier turn key derivation stored it.
    before = turn_key_before("POST /chat", "O")
    await budgets.db.execute(f"UPDATE {budgets.at}.expenses SET turn_key = ?", (before,))
    for n in range(MAX_KEYS):  # newer keys push O out of what is remembered
        await client.post("/chat", json={"message": "hi"}, headers={"Idempotency-Key": f"o{n}"})
    retry = await client.post("/chat", json=spent, headers={"Idempotency-Key": "O"})
    assert retry.status_code == 409, retry.text
    other = {"message": "spent $2 on groceries", "userId": "u5"}
    reply = await client.post("/chat", json=other, headers={"Idempotency-Key": "O"})
    assert reply.status_code == 200, reply.text
    report = await client.post("/chat", json={"message": "budget report", "userId": "u5"})
    assert "spent $3.00" in report.json()["response"], report.json()["response"]


async def test_a_key_older_than_its_time_is_forgotten(app: FastAPI) -> None:
    units = app.state.runtime.stores.units
    ttl = units.policy.ttl_s
    turn = ChatTurn("u1", "hi", "hello", "router", True, False)
    key = KeyToRemember("POST /chat", "old", "f", 200, lambda applied: {"response": "hello"})
    await units.commit(Unit(turn=turn, key=key, now=time.time() - ttl - 1))
    assert await units.remembered("POST /chat", "old") is None
    fresh = KeyToRemember("POST /chat", "old", "f", 200, lambda applied: {"response": "again"})
    # Remembering the key again clears the expired record rather than colliding with it.
    await units.commit(Unit(turn=turn, key=fresh))
    remembered = await units.remembered("POST /chat", "old")
    assert remembered is not None and remembered.body == {"response": "again"}
