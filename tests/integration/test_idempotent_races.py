"""Two sends of one keyed request at once, over a real uvicorn process, on SQLite and on
PostgreSQL: the first to commit wins and the other is answered with its reply (README: "Two
identical requests racing with one key"), whichever of them reached the agent first; and a
fallback reply, which recorded nothing, is not what the key answers."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import ErsProcess, start_ers

SPEND = {"message": "spent $7 on groceries", "userId": "racer"}
# The agent's time limit, well above the delay below: the slowed call must answer.
SLOW_AGENTS = {"ERS_AGENT_TIMEOUT_S": "60"}

Counter = Callable[[], int]


@pytest.fixture(params=["sqlite", "postgresql"])
def ers_and_expenses(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[ErsProcess, Counter]]:
    """A running ERS on one engine, and how many expenses its budgets store holds."""
    env = dict(SLOW_AGENTS)
    if request.param == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        env["ERS_DATABASE_URL"] = url

        def expenses() -> int:
            with psycopg.connect(url) as conn:
                row = conn.execute("SELECT count(*) FROM ers_budgets.expenses").fetchone()
                return int(row[0]) if row else -1

    else:

        def expenses() -> int:
            with sqlite3.connect(tmp_path / "ers" / "data" / "budgets.sqlite3") as db:
                return int(db.execute("SELECT count(*) FROM expenses").fetchone()[0])

    ers = start_ers(tmp_path / "ers", env=env)
    try:
        yield ers, expenses
    finally:
        ers.stop()


async def send_twice_at_once(url: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        # Whichever send reaches the budget agent first waits there, so the other one
        # commits the expense, the turn and the key first.
        slow = {"component": "budget", "errorType": "timeout", "delaySeconds": 3, "count": 1}
        (await http.post("/api/emergency/simulate-error", json=slow)).raise_for_status()
        headers = {"Idempotency-Key": "one-request"}
        return list(
            await asyncio.gather(
                http.post("/chat", json=SPEND, headers=headers),
                http.post("/chat", json=SPEND, headers=headers),
            )
        )


def test_a_send_that_loses_the_race_gets_the_winners_reply(
    ers_and_expenses: tuple[ErsProcess, Counter],
) -> None:
    ers, expenses = ers_and_expenses
    replies = asyncio.run(send_twice_at_once(ers.url))
    assert [r.status_code for r in replies] == [200, 200], [r.text for r in replies]
    assert replies[0].json() == replies[1].json()
    assert "Recorded $7.00" in replies[0].json()["response"]
    assert sorted(r.headers.get("Idempotent-Replayed", "") for r in replies) == ["", "true"]
    assert expenses() == 1


def test_a_fallback_that_recorded_nothing_is_not_the_keys_answer(
    ers_and_expenses: tuple[ErsProcess, Counter],
) -> None:
    """The budget agent fails the first send: its fallback recorded nothing, so the retry
    with the same key reaches the agent and records the expense, once."""
    ers, expenses = ers_and_expenses
    headers = {"Idempotency-Key": "lunch-1"}
    with httpx.Client(base_url=ers.url, timeout=60) as http:
        fault = {"component": "budget", "errorType": "database", "count": 3}
        http.post("/api/emergency/simulate-error", json=fault).raise_for_status()
        first = http.post("/chat", json=SPEND, headers=headers)
        assert first.status_code == 200 and first.json()["emergency"] is True, first.text
        assert expenses() == 0
        http.delete("/api/emergency/simulate-error").raise_for_status()

        retry = http.post("/chat", json=SPEND, headers=headers)
        assert retry.status_code == 200 and retry.json()["emergency"] is False, retry.text
        assert "Idempotent-Replayed" not in retry.headers
        assert "Recorded $7.00" in retry.json()["response"]
        again = http.post("/chat", json=SPEND, headers=headers)
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json() == retry.json()
    assert expenses() == 1
