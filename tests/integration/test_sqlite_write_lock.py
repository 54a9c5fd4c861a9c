"""Another program holding a store's SQLite write lock (an operator's ``sqlite3`` shell in a
transaction, a tool) does not stop the service: the write waiting for the lock waits on the
event loop, so other requests are answered meanwhile, and it goes through once the lock is
let go; held longer than the store waits, the chat gets a 503 that says to try again."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import ErsProcess

CHAT = {"message": "give me a workout plan", "userId": "ana"}


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    outside = sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        outside.execute("BEGIN IMMEDIATE")
        yield
    finally:
        outside.execute("ROLLBACK")
        outside.close()


# A turn alone writes one file; a turn with an expense writes two, on one connection.
@pytest.mark.parametrize(
    ("locked", "message"),
    [("conversations", CHAT["message"]), ("budgets", "budget: add expense 5 coffee")],
)
def test_a_write_waits_for_the_lock_without_stopping_the_other_requests(
    ers_process: ErsProcess, locked: str, message: str
) -> None:
    data = Path(ers_process.log_path).parent / "data"
    turn = {"message": message, "userId": "ana"}
    with httpx.Client(base_url=ers_process.url, timeout=30) as http:
        assert http.post("/chat", json=turn).status_code == 200  # the files exist and work
        answered: list[httpx.Response] = []
        with write_locked(data / f"{locked}.sqlite3"):
            chat = threading.Thread(target=lambda: answered.append(http.post("/chat", json=turn)))
            chat.start()
            waits_for(ers_process, f"the {locked} store's file is locked by another connection")
            # Inside SQLite's own wait, the whole loop would stop, and this would be
            # answered only after the chat had given up with a 503.
            assert http.get("/livez").status_code == 200
            assert http.get("/api/emergency/status").status_code == 200
            assert chat.is_alive(), "the chat must still be waiting for the lock"
        chat.join(timeout=30)
        [reply] = answered
        assert reply.status_code == 200, reply.text
        assert reply.json()["emergency"] is False


@pytest.mark.parametrize(
    ("locked", "message"),
    [("conversations", CHAT["message"]), ("budgets", "budget: add expense 5 coffee")],
)
def test_a_lock_held_longer_than_the_store_waits_gives_a_503_naming_the_file(
    ers_process: ErsProcess, locked: str, message: str
) -> None:
    data = Path(ers_process.log_path).parent / "data"
    turn = {"message": message, "userId": "ana"}
    with httpx.Client(base_url=ers_process.url, timeout=30) as http:
        assert http.post("/chat", json=turn).status_code == 200
        with write_locked(data / f"{locked}.sqlite3"):
            reply = http.post("/chat", json=turn)
        assert reply.status_code == 503
        assert reply.headers["Retry-After"]
        # The file another program holds, not "budgets and conversations".
        assert reply.json()["component"] == locked
        assert http.post("/chat", json=turn).status_code == 200  # and it serves on
    assert (
        f"the {locked} store is unavailable: database is locked: another connection has held "
        "its write lock for more than 2 s"
    ) in ers_process.log()


def waits_for(ers: ErsProcess, line: str, timeout_s: float = 30.0) -> None:
    """Until ``line`` is in the service's log (polled, ``timeout_s`` at most)."""
    deadline = time.monotonic() + timeout_s
    while line not in ers.log():
        assert time.monotonic() < deadline, f"no log line {line!r} within {timeout_s:g} s"
        time.sleep(0.02)
