"""The one way the service opens its SQLite files, and the dialect stores are written over."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service.errors import StoreUnavailable
from service.incidents.audit import AuditLog
from service.incidents.ledger import AlertLedger
from service.incidents.model import IncidentStoreUnavailable
from service.incidents.store import IncidentNotFound, IncidentStore
from service.stores.sql import POSTGRESQL, SQLITE, SqliteDatabase
from service.stores.sqlite import SqliteStore
from telemetry.sqlite import BUSY_TIMEOUT_MS, connect_sqlite

# Longer than the 2 s the audit log and the ledger once waited, well inside BUSY_TIMEOUT_MS.
HELD_S = 2.5


def test_a_connection_has_the_one_set_of_pragmas(tmp_path: Path) -> None:
    db = connect_sqlite(tmp_path / "deep" / "incidents.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == BUSY_TIMEOUT_MS
    assert db.in_transaction is False and db.isolation_level is None
    db.close()


@pytest.mark.parametrize("opener", ["connect_sqlite", "SqliteStore"])
def test_a_new_file_switched_to_wal_by_another_process_meanwhile_is_waited_for(
    tmp_path: Path, opener: str
) -> None:
    """Replicas started together on one data directory open the same new files at once. While
    one holds its write lock on a file not yet in WAL, SQLite answers the switch of the others
    with "database is locked" at once, without its busy handler: the second replica exited at
    its start. The switch now waits (up to the busy timeout) like any other statement."""
    path = tmp_path / "kept-traces.sqlite3"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    release.start()
    try:
        if opener == "connect_sqlite":
            db = connect_sqlite(path)
        else:
            store = SqliteStore("budgets", path, ("CREATE TABLE IF NOT EXISTS b (x)",))
            store.open()
            store.close()
            db = sqlite3.connect(path)
    finally:
        release.join()
        other.close()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def audit_write(path: Path) -> None:
    database = SqliteDatabase(path)
    try:
        audit = AuditLog(database)
        audit.record("admin:token", "rollback", {"component": "budgets"})
        assert audit.recent(1)[0]["detail"] == {"component": "budgets"}
    finally:
        database.close()


def ledger_write(path: Path) -> None:
    database = SqliteDatabase(path)
    try:
        ledger = AlertLedger(database)
        assert ledger.record(f"fp{time.monotonic_ns()}", "2024-05-01T10:00:00Z", "firing", "Down")
    finally:
        database.close()


def store_write(path: Path) -> None:
    store = IncidentStore(path)
    try:
        with pytest.raises(IncidentNotFound):
            store.add_timeline("INC_0_nope00", "note", "hi", "ana")
    finally:
        store.close()


@pytest.mark.parametrize("write", [audit_write, ledger_write, store_write])
def test_every_writer_of_the_incidents_file_waits_out_anothers_write(
    tmp_path: Path, write: Callable[[Path], None]
) -> None:
    """The incident worker's batch, an alert and an audit entry meet in one file: each waits
    for the other's write as long as the others do, rather than failing with "database is
    locked" while the incident store would still have waited."""
    path = tmp_path / "incidents.sqlite3"
    write(path)  # creates the tables
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(HELD_S, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        write(path)
    finally:
        release.join()
        holder.close()


def test_one_of_several_values_in_each_dialect() -> None:
    assert SQLITE.any_of("status", ["open", "acknowledged"]) == (
        "status IN (?,?)",
        ["open", "acknowledged"],
    )
    assert POSTGRESQL.any_of("status", ("open", "acknowledged")) == (
        "status = ANY(?)",
        [["open", "acknowledged"]],
    )


def test_a_thread_that_first_met_the_file_unwritable_writes_again_once_it_can(
    tmp_path: Path, immutable: list[Path]
) -> None:
    """SQLite opens a file it may not write read-only, and such a connection stays so: a
    thread that first used the incidents file while it could not be written (a read-only
    mount, an immutable file) kept failing after the file was writable again."""
    path = tmp_path / "incidents.sqlite3"
    store = IncidentStore(path)
    audit = AuditLog(store.database)
    targets = [path, path.with_name(path.name + "-wal")]
    done = subprocess.run(["chattr", "+i", *map(str, targets)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this filesystem cannot make files immutable: {done.stderr.strip()}")
    immutable.extend(targets)
    outcomes: list[str] = []

    def write() -> None:
        try:
            audit.record("ana", "rollback", {"reason": "test"})
        except IncidentStoreUnavailable as exc:
            outcomes.append(str(exc))
        else:
            outcomes.append("written")

    with ThreadPoolExecutor(max_workers=1) as one_thread:
        one_thread.submit(write).result()
        subprocess.run(["chattr", "-i", *map(str, targets)], check=True)
        immutable.clear()
        one_thread.submit(write).result()
    assert outcomes[0].startswith("the incident store is unavailable: "), outcomes
    assert outcomes[1] == "written", outcomes
    assert [entry["actor"] for entry in audit.recent(10)] == ["ana"]
    store.close()


async def test_a_store_opened_while_its_file_was_unwritable_writes_once_it_can(
    tmp_path: Path, immutable: list[Path]
) -> None:
    """A component store started with its file immutable opened read-only, and its health
    probe kept failing with 'attempt to write a readonly database' after the file was fixed,
    until a restart."""
    path = tmp_path / "budgets.sqlite3"
    ddl = ("CREATE TABLE IF NOT EXISTS b (x)",)
    first = SqliteStore("budgets", path, ddl)
    first.open()
    first.close()
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this filesystem cannot make files immutable: {done.stderr.strip()}")
    immutable.append(path)
    store = SqliteStore("budgets", path, ddl)
    store.open()  # read-only, without a word from SQLite
    try:
        with pytest.raises(StoreUnavailable, match="readonly"):
            await store.probe_writable()
        subprocess.run(["chattr", "-i", str(path)], check=True)
        immutable.clear()
        with contextlib.suppress(StoreUnavailable):
            await store.probe_writable()  # the read-only connection's last refusal
        await store.probe_writable()
        await store.execute("INSERT INTO b (x) VALUES (1)")
        assert [tuple(row) for row in await store.fetch_all("SELECT x FROM b")] == [(1,)]
    finally:
        store.close()


def test_close_waits_for_the_statements_other_threads_are_running(tmp_path: Path) -> None:
    """A health probe's write, in its own thread, was still running when the shutdown closed
    the incidents file: closing a connection under another thread's statement crashed the
    process (a segmentation fault). close() now waits for it, and nothing starts after."""
    database = SqliteDatabase(tmp_path / "incidents.sqlite3", "CREATE TABLE t (v TEXT)")
    inside, go = threading.Event(), threading.Event()
    written: list[int] = []

    def probe() -> None:
        with database.transaction() as db:
            inside.set()
            go.wait(timeout=30)
            db.execute("INSERT INTO t (v) VALUES ('probe')")
            written.append(db.execute("SELECT count(*) FROM t").fetchone()[0])

    prober = threading.Thread(target=probe)
    prober.start()
    assert inside.wait(timeout=30)
    closer = threading.Thread(target=database.close)
    closer.start()
    closer.join(timeout=0.5)
    assert closer.is_alive()  # waiting for the probe's transaction, not closing under it
    go.set()
    prober.join(timeout=30)
    closer.join(timeout=30)
    assert written == [1] and not closer.is_alive()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        database.rows("SELECT 1")
