"""A chat turn's writes land together or not at all, over a real uvicorn process: a disk that
fills while a turn is committed answers 503 and leaves no row in any store; a retry with the
same Idempotency-Key once there is room records the expense once; a replay writes nothing.
The same on PostgreSQL, where one transaction holds every store's writes."""

from __future__ import annotations

import errno
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from service.stores import Stores
from service.stores.base import ChatTurn
from service.stores.conversations import ConversationStore
from service.stores.unit_of_work import ExpenseRecordedBefore, KeyToRemember, Unit
from service.stores.writes import AddExpense
from tests.conftest import ErsProcess, start_ers

SPEND = "spent $5 on groceries"
# The health probe has written a few pages into the conversations log by the time the
# disk fills; once checkpointed, a short turn could be written over them in place. A long
# note needs pages the full disk cannot give.
# Larger than the pages a store's write-ahead log keeps from its start-up writes: a turn
# that fits in them is written without a new block of the full disk (20 KB sometimes did).
LONG_SPEND = SPEND + ", " + "for the picnic and the party " * 3000
# Health checks write probe rows into every store: once at start, then not during the test.
QUIET_HEALTH = {"ERS_HEALTH_CHECK_INTERVAL_S": "3600", "ERS_MAX_MESSAGE_CHARS": "100000"}


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of its own, so that it can fill up without filling the machine's disk."""
    volume = tmp_path / "volume"
    volume.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(volume)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if mounted.returncode != 0:
        pytest.skip(f"a tmpfs cannot be mounted here (needs root): {mounted.stderr.strip()}")
    try:
        yield volume
    finally:
        subprocess.run(["umount", "-l", str(volume)], capture_output=True, timeout=10)


def fill(volume: Path) -> Path:
    """Write to ``volume`` until the kernel says no space is left; returns the filler."""
    filler = volume / "filler"
    chunk = b"\0" * 4096
    with filler.open("wb", buffering=0) as out:
        for _ in range(2048):  # 8 MiB at most: more than the volume holds
            try:
                out.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        else:
            raise AssertionError(f"{volume} never filled up")
    return filler


def count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def chat(ers: ErsProcess, message: str, key: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return httpx.post(
        f"{ers.url}/chat",
        json={"message": message, "userId": "u1"},
        headers=headers,
        timeout=15,
    )


def test_a_turn_whose_commit_hits_a_full_disk_stores_nothing_and_a_keyed_retry_stores_once(
    tmp_path: Path, small_volume: Path
) -> None:
    # The conversations file lives on the small volume; the other stores have room.
    data = tmp_path / "ers" / "data"
    data.mkdir(parents=True)
    on_volume = small_volume / "conversations.sqlite3"
    store = ConversationStore.in_file(on_volume).db
    store.open()
    store.close()
    (data / "conversations.sqlite3").symlink_to(on_volume)
    ers = start_ers(tmp_path / "ers", env=QUIET_HEALTH)
    try:
        filler = fill(small_volume)
        for _ in range(2):
            full = chat(ers, LONG_SPEND, key="retry-me-1")
            assert full.status_code == 503, full.text
            assert full.json()["error"] == "state store unavailable"
            # The commit itself failed, after the budgets file had committed its part: the
            # expense was taken back.
            # A name a script can match, and every store of the turn.
            assert full.json()["component"] == "budgets"
            assert full.json()["components"] == ["budgets", "conversations"]
            assert full.json()["detail"] == (
                "the budgets and conversations stores cannot be used right now; try again shortly"
            )
            assert full.headers["Retry-After"]
        # The failure's trace is kept, and the reply names it as a 200 does (before: no
        # traceId in a 503, so nothing led from the failed chat to its trace).
        failed_trace = full.json()["traceId"]
        deadline = time.monotonic() + 10
        while (
            kept := httpx.get(f"{ers.url}/api/emergency/traces/{failed_trace}")
        ).status_code != 200:
            assert time.monotonic() < deadline, kept.text
            time.sleep(0.1)
        assert kept.json()["errorSpans"] >= 1, kept.json()
        budgets = data / "budgets.sqlite3"
        assert count(budgets, "expenses") == 0
        assert count(on_volume, "turns") == 0
        assert count(on_volume, "idempotency_keys") == 0

        filler.unlink()
        first = chat(ers, LONG_SPEND, key="retry-me-1")
        assert first.status_code == 200, first.text
        assert "Recorded $5.00 for food" in first.json()["response"]
        assert count(budgets, "expenses") == 1
        assert count(on_volume, "turns") == 1

        replay = chat(ers, LONG_SPEND, key="retry-me-1")
        assert replay.status_code == 200
        assert replay.json() == first.json()
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert count(budgets, "expenses") == 1
        assert count(on_volume, "turns") == 1

        other = chat(ers, "spent $7 on coffee", key="retry-me-1")
        assert other.status_code == 422
        assert "different request" in other.json()["detail"]
        assert count(budgets, "expenses") == 1
    finally:
        ers.stop()
    assert "Traceback" not in ers.log()


def test_a_data_dir_that_fills_up_answers_503_and_every_store_stays_empty(
    tmp_path: Path, small_volume: Path
) -> None:
    ers = start_ers(tmp_path / "ers", env={**QUIET_HEALTH, "ERS_DATA_DIR": str(small_volume)})
    try:
        assert httpx.get(f"{ers.url}/readyz", timeout=10).status_code == 200
        filler = fill(small_volume)
        for message in (LONG_SPEND, "I am 30, 80 kg, 180 cm, male: " + LONG_SPEND):
            full = chat(ers, message, key=f"k-{len(message)}")
            assert full.status_code == 503, full.text
        # The files are this replica's own: a balancer is told to send its chats elsewhere,
        # though the stores' tiny write probes may still fit.
        ready = httpx.get(f"{ers.url}/readyz", timeout=10)
        assert ready.status_code == 503, ready.text
        assert ready.json() == {
            "status": "not ready",
            "reason": f"the state cannot be written: disk of {small_volume} is 100% full",
        }
        filler.unlink()
        assert httpx.get(f"{ers.url}/readyz", timeout=10).status_code == 200
    finally:
        ers.stop()
    assert count(small_volume / "budgets.sqlite3", "expenses") == 0
    assert count(small_volume / "profiles.sqlite3", "profiles") == 0
    assert count(small_volume / "conversations.sqlite3", "turns") == 0
    assert count(small_volume / "conversations.sqlite3", "idempotency_keys") == 0


def test_a_replayed_request_returns_the_first_reply_and_writes_nothing(
    ers_process: ErsProcess,
) -> None:
    data = ers_process.log_path.parent / "data"
    first = chat(ers_process, SPEND, key="once")
    assert first.status_code == 200 and "Recorded $5.00" in first.json()["response"]
    again = [chat(ers_process, SPEND, key="once") for _ in range(3)]
    assert [r.json() for r in again] == [first.json()] * 3
    assert "Idempotent-Replayed" not in first.headers
    # Without a key each request is its own: the second one records a second expense.
    assert chat(ers_process, SPEND).status_code == 200
    assert count(data / "budgets.sqlite3", "expenses") == 2
    assert count(data / "conversations.sqlite3", "turns") == 2

    put = httpx.put(
        f"{ers_process.url}/api/profiles/u1",
        json={"age": 30},
        headers={"Idempotency-Key": "p-1"},
        timeout=10,
    )
    assert put.status_code == 200 and put.json()["age"] == 30
    changed = httpx.put(f"{ers_process.url}/api/profiles/u1", json={"age": 31}, timeout=10)
    assert changed.json()["age"] == 31
    replay = httpx.put(
        f"{ers_process.url}/api/profiles/u1",
        json={"age": 30},
        headers={"Idempotency-Key": "p-1"},
        timeout=10,
    )
    # The first reply again, and the profile as the later request left it.
    assert replay.json() == put.json() and replay.headers["Idempotent-Replayed"] == "true"
    assert httpx.get(f"{ers_process.url}/api/profiles/u1", timeout=10).json()["age"] == 31


def test_on_postgresql_a_failed_turn_stores_nothing_and_a_keyed_retry_stores_once(
    tmp_path: Path, pg_url: str
) -> None:
    ers = start_ers(tmp_path / "ers", env={"ERS_DATABASE_URL": pg_url})
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            # The turn's own insert fails (as a full disk would fail it) after the agent
            # asked for its expense.
            conn.execute(
                "ALTER TABLE ers_conversations.turns ADD CONSTRAINT refuse_turns"
                " CHECK (length(message) < 0) NOT VALID"
            )
            for _ in range(2):
                refused = chat(ers, SPEND, key="pg-1")
                assert refused.status_code == 503, refused.text
            expenses = "SELECT count(*) FROM ers_budgets.expenses"
            turns = "SELECT count(*) FROM ers_conversations.turns"
            assert conn.execute(expenses).fetchone() == (0,)
            assert conn.execute(turns).fetchone() == (0,)

            conn.execute("ALTER TABLE ers_conversations.turns DROP CONSTRAINT refuse_turns")
            first = chat(ers, SPEND, key="pg-1")
            assert first.status_code == 200, first.text
            replay = chat(ers, SPEND, key="pg-1")
            assert replay.json() == first.json()
            assert replay.headers["Idempotent-Replayed"] == "true"
            assert conn.execute(expenses).fetchone() == (1,)
            assert conn.execute(turns).fetchone() == (1,)
    finally:
        ers.stop()


# Chats before the disk fills leave room in pages each file's log holds already.
@pytest.mark.parametrize("warm", [0, 10])
def test_a_full_data_dir_answers_each_chat_as_its_expense_was_stored(
    warm: int, tmp_path: Path, small_volume: Path
) -> None:
    # Each file has some room left in pages it holds already: the commit that fails may be
    # the conversations file's after the budgets file's went through, with no room left to
    # take the expense back. Whatever each chat was answered, the expenses stored are the
    # ones answered 200.
    env = {**QUIET_HEALTH, "ERS_DATA_DIR": str(small_volume)}
    ers = start_ers(tmp_path / "ers", env=env)
    answered: list[int] = []
    try:
        for number in range(warm):
            assert chat(ers, f"spent $1 on groceries (-{number})").status_code == 200
        answered += [200] * warm
        filler = fill(small_volume)
        for number in range(12):
            reply = chat(ers, f"spent $1 on groceries ({number})", key=f"full-{number}")
            answered.append(reply.status_code)
            if reply.status_code == 200:
                assert "Recorded $1.00" in reply.json()["response"], reply.text
            else:
                assert reply.status_code == 503, reply.text
        filler.unlink()
        with sqlite3.connect(small_volume / "budgets.sqlite3") as conn:
            stored = int(conn.execute("SELECT count(*) FROM expenses").fetchone()[0])
        assert stored == answered.count(200), answered
    finally:
        ers.stop()
    assert "Traceback" not in ers.log()


class NoRoomToUndo(sqlite3.Connection):
    """The connection that attaches the files, where the delete that takes a turn's expense
    back finds the disk as full as the commit before it did."""

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.startswith("DELETE FROM ers_budgets.expenses"):
            raise sqlite3.OperationalError("database or disk is full")
        return super().execute(sql, *args)


async def test_an_expense_that_cannot_be_taken_back_is_answered_as_recorded(
    tmp_path: Path, small_volume: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The conversations file fills as it commits, after the budgets file committed the
    # expense; the delete that would take it back fails too. A 503 would ask for a retry
    # that records it a second time: the unit is answered as committed, less its turn.
    connect = sqlite3.connect

    def attaching(database: str, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        if database == ":memory:":
            kwargs["factory"] = NoRoomToUndo
        return connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", attaching)
    data = tmp_path / "data"
    data.mkdir()
    on_volume = small_volume / "conversations.sqlite3"
    (data / "conversations.sqlite3").symlink_to(on_volume)
    stores = Stores.in_directory(data)
    await stores.open()
    try:
        fill(small_volume)
        key = KeyToRemember("POST /chat", "k-1", "f", 200, lambda applied: {"response": "ok"})
        spend = AddExpense("u1", "food", 500, "spent $5 on food")
        turn = ChatTurn("u1", LONG_SPEND, "Recorded $5.00 for food", "budget", True, False)
        applied = await stores.units.commit(Unit((spend,), turn, turn_key="t-1", key=key))
        assert applied.turn_id is None
        assert count(data / "budgets.sqlite3", "expenses") == 1
        assert count(on_volume, "turns") == 0
        # Its key is not remembered; its retry finds the expense and records nothing.
        with pytest.raises(ExpenseRecordedBefore):
            await stores.units.commit(Unit((spend,), turn, turn_key="t-1", key=key))
        assert count(data / "budgets.sqlite3", "expenses") == 1
    finally:
        await stores.close()
