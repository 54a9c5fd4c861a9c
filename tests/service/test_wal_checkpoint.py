"""WAL checkpoints: the stores' writers never checkpoint; a thread of its own does, on its
own connection, and never while a store is paused for a file swap."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.stores.base import ChatTurn
from service.stores.conversations import ConversationStore
from service.stores.sqlite import SqliteStore
from service.stores.unit_of_work import Unit
from service.stores.wal_checkpoint import WalCheckpointer
from tests.store_writes import turn_count


def _turn(n: int) -> ChatTurn:
    return ChatTurn(f"u{n % 7}", f"message {n}", "reply " * 20, "nutrition", True, False)


@pytest.fixture
def conversations(tmp_path: Path) -> Iterator[ConversationStore]:
    s = ConversationStore.in_file(tmp_path / "conversations.sqlite3")
    s.db.open()
    yield s
    s.db.close()


@pytest.fixture
def store(conversations: ConversationStore) -> SqliteStore:
    assert isinstance(conversations.db, SqliteStore)
    return conversations.db


async def test_the_writer_leaves_checkpoints_to_the_checkpointer(
    conversations: ConversationStore, store: SqliteStore
) -> None:
    conn = store._connection()
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for n in range(300):
        await conversations.db.commit_unit(Unit(turn=_turn(n)))
    busy, log_frames, checkpointed = store.checkpoint() or (1, 0, 0)
    assert busy == 0
    assert log_frames > 0
    assert checkpointed == log_frames  # everything the writer logged was copied
    await conversations.db.commit_unit(Unit(turn=_turn(300)))
    # The first commit after a complete checkpoint starts the log over: it holds that
    # commit's few pages, not 300 commits' worth.
    after = store.checkpoint()
    assert after is not None
    assert 0 < after[1] <= 8
    assert await turn_count(conversations) == 301


async def test_a_paused_store_is_not_checkpointed_and_holds_no_connection(
    conversations: ConversationStore,
    store: SqliteStore,
) -> None:
    await conversations.db.commit_unit(Unit(turn=_turn(0)))
    assert store.checkpoint() is not None
    store.pause("a rollback is swapping the file")
    assert store.checkpoint() is None
    assert store._checkpoint_conn is None
    store.open()
    assert store.checkpoint() is not None


async def test_checkpoints_run_beside_a_busy_writer_without_losing_a_row(
    conversations: ConversationStore,
    store: SqliteStore,
) -> None:
    checkpointer = WalCheckpointer(interval_s=0)
    checkpointer.add(store)
    stop = threading.Event()
    runs = 0

    def checkpoint_continuously() -> None:
        nonlocal runs
        while not stop.is_set():
            checkpointer.run_once()
            runs += 1

    thread = threading.Thread(target=checkpoint_continuously)
    thread.start()
    try:
        for n in range(2000):
            await conversations.db.commit_unit(Unit(turn=_turn(n)))
    finally:
        stop.set()
        thread.join(10)
    assert runs > 0
    assert checkpointer.failures == 0
    assert await turn_count(conversations) == 2000


def test_a_failing_checkpoint_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        component = "broken"

        def checkpoint(self) -> None:
            raise OSError("disk I/O error")

    class Fine:
        component = "fine"
        calls = 0

        def checkpoint(self) -> None:
            self.calls += 1

    checkpointer = WalCheckpointer()
    broken, fine = Broken(), Fine()
    checkpointer._stores.add(broken)  # no thread: run_once is driven here
    checkpointer._stores.add(fine)
    with caplog.at_level(logging.WARNING, logger="ers.stores"):
        checkpointer.run_once()
    assert fine.calls == 1
    assert checkpointer.failures == 1
    assert "WAL checkpoint of the broken store failed: disk I/O error" in caplog.text
