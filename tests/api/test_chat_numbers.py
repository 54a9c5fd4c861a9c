"""Numbers in chat are taken as written or not at all: a figure the agents cannot take gets a
422 that quotes it and says why, and neither the budgets, the profiles nor the conversation
store keep anything of that turn."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from tests.store_writes import stored_turns

USER = "num-user"


async def say(client: httpx.AsyncClient, message: str) -> httpx.Response:
    return await client.post("/chat", json={"message": message, "userId": USER})


async def assert_nothing_stored(app: FastAPI) -> None:
    stores = app.state.runtime.stores
    assert await stores.budgets.report(USER) == []
    assert await stores.profiles.get(USER) is None
    assert await stored_turns(stores, USER) == []


@pytest.mark.parametrize(
    "message,quoted,reason",
    [
        ("set my food budget to $-400", "$-400", "cannot be negative"),
        ("spent $-25 on groceries", "$-25", "cannot be negative"),
        ("spent -$25 on groceries", "-$25", "cannot be negative"),
        ("spent -25 dollars on groceries", "-25 dollars", "cannot be negative"),
        ("spent $1e308 on groceries", "$1e308", "without an exponent"),
        ("spent 1e308 on groceries", "1e308", "without an exponent"),
        ("spent $NaN on groceries", "$nan", "not an amount"),
        ("spent $inf on groceries", "$inf", "not an amount"),
        ("spent $Infinity on groceries", "$infinity", "not an amount"),
        ("spent $25.999 on groceries", "$25.999", "at most two decimals"),
        ("spent $1.200 on rent", "$1.200", "at most two decimals"),
        ("spent $1,000,000.01 on rent", "$1,000,000.01", "at most $1,000,000.00"),
        ("set my rent budget to $99999999999", "$99999999999", "at most $1,000,000.00"),
        ("spent $0 on groceries", "$0", "above zero"),
        ("spent $25k on a car", "$25k", "digits only"),
        ("spent $1,2,3 on fun", "$1,2,3", "write amounts like"),
    ],
)
async def test_an_amount_not_taken_as_written_records_nothing(
    client: httpx.AsyncClient, app: FastAPI, message: str, quoted: str, reason: str
) -> None:
    reply = await say(client, message)
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    assert f"I did not understand '{quoted}'" in detail
    assert reason in detail and "Nothing was recorded" in detail
    await assert_nothing_stored(app)


@pytest.mark.parametrize(
    "message,quoted,reason",
    [
        ("I am 30, -80 kg, 180 cm, male", "-80 kg", "cannot be negative"),
        ("I am 999, 80 kg, 180 cm, male", "i am 999", "from 10 to 110 years"),
        ("I am 5", "i am 5", "from 10 to 110 years"),
        ("I am 30.5, 80 kg", "i am 30.5", "whole number of years"),
        ("I am 30, 80 kg, 18 cm, male", "18 cm", "more than 80 and at most 260 cm"),
        ("I am 30, 900 lbs, male", "900 lbs", "more than 20 and at most 400 kg"),
        ("I am 30, 1e2 kg, male", "1e2 kg", "plain digits"),
        ("I am 30, 80 kg, 3.10 m, male", "3.10 m", "at most 260 cm"),
        ("my weight is -80 kg", "-80 kg", "cannot be negative"),
    ],
)
async def test_a_profile_figure_not_taken_as_written_saves_nothing(
    client: httpx.AsyncClient, app: FastAPI, message: str, quoted: str, reason: str
) -> None:
    reply = await say(client, message)
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    assert f"I did not understand '{quoted}'" in detail
    assert reason in detail and "Nothing was saved" in detail
    await assert_nothing_stored(app)


async def test_thousands_separators_and_decimal_commas_are_read_as_meant(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    assert (await say(client, "set my rent budget to $1,200")).status_code == 200
    assert (await say(client, "spent $1,000.50 on rent")).status_code == 200
    assert (await say(client, "paid € 12,5 for lunch")).status_code == 200
    rows = {r.category: r for r in await app.state.runtime.stores.budgets.report(USER)}
    assert rows["housing"].limit_cents == 120_000
    assert rows["housing"].spent_cents == 100_050
    assert rows["food"].spent_cents == 1_250


async def test_the_largest_amount_is_taken(client: httpx.AsyncClient, app: FastAPI) -> None:
    reply = await say(client, "set my savings budget to $1,000,000.00")
    assert reply.status_code == 200, reply.text
    assert "$1,000,000.00" in reply.json()["response"]


async def test_a_goal_in_kilograms_is_not_a_weight(client: httpx.AsyncClient, app: FastAPI) -> None:
    # "lose 5 kg" states a change, not the person's weight: the profile keeps the 80 kg.
    reply = await say(client, "I am 30, 80 kg, 180 cm, male and want to lose 5 kg")
    assert reply.status_code == 200, reply.text
    profile = await app.state.runtime.stores.profiles.get(USER)
    assert profile is not None and (profile.age, profile.weight_kg) == (30, 80.0)
