"""The alert idempotency ledger, the same on SQLite and on PostgreSQL, on the incident store's
database as the service opens it: two ledgers on one database (replicas) that receive one
notification at once still act on it once."""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from service.incidents import ledger as ledger_module
from service.incidents import store_pg
from service.incidents.ledger import AlertLedger, LedgerUnavailable
from service.incidents.model import IncidentStoreUnavailable
from service.incidents.service import MIGRATIONS as INCIDENT_STATE
from service.incidents.store import IncidentStore
from service.incidents.store_pg import PgIncidentStore
from tests.pg import apply_migrations

Ledger = AlertLedger
DELIVERIES_PER_REPLICA = 200


@pytest.fixture
def ledger_url(pg_url: str) -> str:
    apply_migrations(pg_url, INCIDENT_STATE)
    return pg_url


@pytest.fixture(params=["sqlite", "postgresql"])
def new_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Ledger]]:
    """Builds ledgers on one SQLite file or one migrated PostgreSQL database, each with its
    own connections; closes them afterwards."""
    stores: list[IncidentStore] = []

    def make() -> Ledger:
        if request.param == "sqlite":
            stores.append(IncidentStore(tmp_path / "incidents.sqlite3"))
        else:
            stores.append(PgIncidentStore(request.getfixturevalue("ledger_url")))
        return AlertLedger(stores[-1].database)

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def ledger(new_ledger: Callable[[], Ledger]) -> Ledger:
    return new_ledger()


@pytest.fixture
def replicas(new_ledger: Callable[[], Ledger]) -> tuple[Ledger, Ledger]:
    """Two ledgers on one database, as two replicas (or two processes on one file) have."""
    return new_ledger(), new_ledger()


def test_an_alert_is_new_once_then_counted_as_redelivered(ledger: Ledger) -> None:
    key = ("fp1", "2024-05-01T10:00:00Z", "firing")
    assert ledger.record(*key, "ErrorRateHigh") is True
    assert ledger.record(*key, "ErrorRateHigh") is False
    assert ledger.record(*key, "ErrorRateHigh") is False
    assert ledger.entry(*key) == {"deliveries": 3, "incidentId": None, "outcome": None}
    # Its resolution, and another firing of the same alert, are new events.
    assert ledger.record("fp1", "2024-05-01T10:00:00Z", "resolved", "ErrorRateHigh") is True
    assert ledger.record("fp1", "2024-05-01T11:00:00Z", "firing", "ErrorRateHigh") is True


def test_finish_notes_the_incident_and_outcome(ledger: Ledger) -> None:
    key = ("fp2", "2024-05-01T10:00:00Z", "firing")
    assert ledger.entry(*key) is None
    ledger.record(*key, "BreakerOpen")
    ledger.finish(*key, "INC_1_abcdef", "isolated")
    assert ledger.entry(*key) == {
        "deliveries": 1,
        "incidentId": "INC_1_abcdef",
        "outcome": "isolated",
    }


def test_a_replicas_skip_after_the_cooldown_does_not_overwrite_anothers_isolation(
    replicas: tuple[Ledger, Ledger],
) -> None:
    """Each replica of the fleet that got a delivery skipped by the cooldown waits for its
    end; one isolates, the other is then skipped. Written in either order, the firing's
    outcome stays the isolation: its resolution reads a skip as "isolated nothing"."""
    first, second = replicas
    key = ("fp-pair", "2024-05-01T10:00:00Z", "firing")
    first.record(*key, "AgentErrorRatioHigh")
    waited = "isolate: skipped within the cooldown; run once it ends if the alert still fires"
    first.finish(*key, "INC_1_abcdef", waited)
    skipped, isolated = "isolate: skipped, once the cooldown ended", "isolate: success, once ..."
    second.finish(*key, "INC_1_abcdef", isolated)
    first.finish(*key, "INC_1_abcdef", skipped, keep=ledger_module.ISOLATED)
    assert (first.entry(*key) or {})["outcome"] == isolated
    second.finish(*key, "INC_1_abcdef", waited)  # the other order
    first.finish(*key, "INC_1_abcdef", skipped, keep=ledger_module.ISOLATED)
    second.finish(*key, "INC_1_abcdef", isolated)
    assert (first.entry(*key) or {})["outcome"] == isolated


@pytest.mark.parametrize("outcome", ["emergency_backup: failed", "failed: OSError: disk full"])
def test_a_delivery_whose_action_failed_is_taken_again_once(ledger: Ledger, outcome: str) -> None:
    key = ("fp3", "2024-05-01T10:00:00Z", "firing")
    ledger.record(*key, "CriticalIncidentActive")
    ledger.finish(*key, "INC_1_abcdef", outcome)
    assert ledger.record(*key, "CriticalIncidentActive") is True
    assert ledger.entry(*key) == {"deliveries": 2, "incidentId": "INC_1_abcdef", "outcome": None}
    # While that attempt runs, and once it succeeded, further deliveries are duplicates.
    assert ledger.record(*key, "CriticalIncidentActive") is False
    ledger.finish(*key, "INC_1_abcdef", "emergency_backup: success")
    assert ledger.record(*key, "CriticalIncidentActive") is False


@pytest.mark.parametrize("outcome", ["emergency_backup: skipped", "emergency_backup: success"])
def test_a_delivery_whose_action_ran_or_was_covered_is_not_taken_again(
    ledger: Ledger, outcome: str
) -> None:
    # Skipped: an emergency backup within the cooldown of the last one, which covers it.
    key = ("fp5", "2024-05-01T10:00:00Z", "firing")
    ledger.record(*key, "CriticalIncidentActive")
    ledger.finish(*key, "INC_1_abcdef", outcome)
    assert ledger.record(*key, "CriticalIncidentActive") is False
    assert ledger.entry(*key) == {"deliveries": 2, "incidentId": "INC_1_abcdef", "outcome": outcome}


def test_an_attempt_lost_with_its_process_is_taken_again(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = ("fp4", "2024-05-01T10:00:00Z", "firing")
    ledger.record(*key, "AgentErrorRatioHigh")
    clock = itertools.count(time.time() + ledger_module.UNFINISHED_AFTER_S + 1)
    monkeypatch.setattr(ledger_module.time, "time", lambda: float(next(clock)))
    assert ledger.record(*key, "AgentErrorRatioHigh") is True
    assert ledger.record(*key, "AgentErrorRatioHigh") is False


def test_mark_lost_hands_unfinished_attempts_to_their_next_delivery(ledger: Ledger) -> None:
    ledger.record("done", "t", "firing", "A")
    ledger.finish("done", "t", "firing", "", "isolate: success")
    ledger.record("cut", "t", "firing", "A")
    assert len(ledger.mark_lost()) == 1
    assert ledger.entry("cut", "t", "firing")["outcome"] == ledger_module.LOST  # type: ignore[index]
    assert ledger.record("cut", "t", "firing", "A") is True
    assert ledger.record("done", "t", "firing", "A") is False


def test_a_lost_resolution_is_taken_again_as_delivered_once_and_a_lost_firing_is_not(
    replicas: tuple[Ledger, Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = replicas
    first.record("r1", "t", "resolved", "A", '{"status": "resolved", "fingerprint": "r1"}')
    first.record("f1", "t", "firing", "A", None)
    first.record("r2", "t", "resolved", "A", '{"status": "resolved", "fingerprint": "r2"}')
    first.finish("r2", "t", "resolved", "", "resolved: no incident to recover")
    assert second.take_lost_resolutions() == []  # still running, as far as anyone knows
    assert len(first.mark_lost()) == 2  # a start on the file: r1 and f1 were lost
    assert second.take_lost_resolutions() == ['{"status": "resolved", "fingerprint": "r1"}']
    assert first.take_lost_resolutions() == []  # taken once, by one replica
    assert first.entry("r1", "t", "resolved")["outcome"] is None  # type: ignore[index]
    assert first.entry("f1", "t", "firing")["outcome"] == ledger_module.LOST  # type: ignore[index]

    # On PostgreSQL nobody marks it lost: unfinished past the limit, any replica takes it.
    clock = itertools.count(time.time() + ledger_module.UNFINISHED_AFTER_S + 1)
    monkeypatch.setattr(ledger_module.time, "time", lambda: float(next(clock)))
    taken = [second.take_lost_resolutions(), first.take_lost_resolutions()]
    assert taken == [['{"status": "resolved", "fingerprint": "r1"}'], []]
    first.finish("r1", "t", "resolved", "", "resolved: no incident to recover")
    monkeypatch.setattr(ledger_module.time, "time", lambda: float(next(clock)) + 10_000)
    assert second.take_lost_resolutions() == []  # finished: never again


def test_the_firings_since_a_time_are_those_acted_on_and_received_after_it(
    ledger: Ledger,
) -> None:
    ledger.record("old", "t", "firing", "A", '{"fingerprint": "old"}')
    since = time.time()
    time.sleep(0.01)
    for fingerprint, outcome in [
        ("acted", "isolate: success"),
        ("stale", "stale: x; nothing done"),
    ]:
        ledger.record(fingerprint, "t", "firing", "A", f'{{"fingerprint": "{fingerprint}"}}')
        ledger.finish(fingerprint, "t", "firing", "", outcome)
    ledger.record("running", "t", "firing", "A", '{"fingerprint": "running"}')
    ledger.record("resolution", "t", "resolved", "A", '{"fingerprint": "resolution"}')

    assert sorted(ledger.firings_since(since)) == [
        '{"fingerprint": "acted"}',
        '{"fingerprint": "running"}',
    ]


def run_together(*jobs: threading.Thread) -> None:
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=120)
    assert not any(job.is_alive() for job in jobs), "a replica did not finish"


def test_replicas_receiving_one_alert_at_once_act_on_it_once(
    replicas: tuple[Ledger, Ledger],
) -> None:
    firsts: list[bool] = []
    barrier = threading.Barrier(2)

    def deliver(ledger: Ledger) -> None:
        barrier.wait(timeout=10)
        for _ in range(DELIVERIES_PER_REPLICA):
            firsts.append(ledger.record("fp", "2024-05-01T10:00:00Z", "firing", "Down"))

    run_together(*(threading.Thread(target=deliver, args=(r,)) for r in replicas))
    assert firsts.count(True) == 1
    entry = replicas[1].entry("fp", "2024-05-01T10:00:00Z", "firing")
    assert entry is not None and entry["deliveries"] == 2 * DELIVERIES_PER_REPLICA


def test_replicas_sharing_many_alerts_each_take_every_alert_once(
    replicas: tuple[Ledger, Ledger],
) -> None:
    taken: list[list[str]] = [[], []]
    barrier = threading.Barrier(2)

    def deliver(index: int) -> None:
        barrier.wait(timeout=10)
        for n in range(DELIVERIES_PER_REPLICA):
            if replicas[index].record(f"fp{n}", "2024-05-01T10:00:00Z", "firing", "Down"):
                taken[index].append(f"fp{n}")

    run_together(*(threading.Thread(target=deliver, args=(i,)) for i in (0, 1)))
    assert sorted(taken[0] + taken[1]) == sorted(f"fp{n}" for n in range(DELIVERIES_PER_REPLICA))


def test_a_database_without_the_ledger_is_refused_with_the_next_step(pg_url: str) -> None:
    apply_migrations(pg_url, {store_pg.COMPONENT: store_pg.MIGRATIONS})
    with pytest.raises(IncidentStoreUnavailable, match="alert_ledger.* run the PostgreSQL migr"):
        PgIncidentStore(pg_url)


def test_ledger_failures_never_show_the_password(ledger_url: str) -> None:
    parts = urlsplit(ledger_url)
    wrong = "wrong-ledger-p4ss"
    url = urlunsplit(
        parts._replace(netloc=f"{parts.username}:{wrong}@{parts.hostname}:{parts.port}")
    )
    with pytest.raises(IncidentStoreUnavailable) as refused:
        PgIncidentStore(url)
    assert wrong not in str(refused.value)
    assert f"{parts.hostname}:{parts.port}" in str(refused.value)
    store = PgIncidentStore(ledger_url)
    alerts = AlertLedger(store.database)
    store.close()
    with pytest.raises(LedgerUnavailable, match="closed"):
        alerts.record("fp", "t", "firing", "Down")


def test_on_postgresql_an_attempt_whose_taker_is_gone_is_taken_again_at_once(
    ledger_url: str,
) -> None:
    """Each attempt names its taker's presence session; while that session is on, the
    attempt is running, and once it is gone (its replica was killed) the next delivery, or
    the replay of a resolution, takes it without waiting out the 5 minutes."""
    stores = [PgIncidentStore(ledger_url) for _ in range(3)]
    try:
        with (
            psycopg.connect(ledger_url, application_name="ers serve pid 7 on alive") as session,
            psycopg.connect(ledger_url, application_name="ers serve pid 9 on other"),
        ):
            alive = AlertLedger(stores[0].database, "ers serve pid 7 on alive")
            gone = AlertLedger(stores[1].database, "ers serve pid 8 on gone")
            other = AlertLedger(stores[2].database, "ers serve pid 9 on other")
            for ledger in (alive, gone):
                ledger.record(ledger.taker or "", "t", "firing", "A")
                ledger.record(ledger.taker or "", "t", "resolved", "A", '{"r": 1}')
            assert other.record(alive.taker or "", "t", "firing", "A") is False
            assert other.taken_at(alive.taker or "", "t", "firing") is not None
            assert other.taken_at(gone.taker or "", "t", "firing") is None
            assert other.record(gone.taker or "", "t", "firing", "A") is True
            assert alive.record(gone.taker or "", "t", "firing", "A") is False  # other's now
            assert other.take_lost_resolutions() == ['{"r": 1}']  # gone's, not alive's
            session.execute("SELECT 1")
    finally:
        for store in stores:
            store.close()


def test_on_postgresql_a_start_marks_lost_only_what_replicas_gone_left_unfinished(
    ledger_url: str,
) -> None:
    """A replica's start marks lost (and so notes on the incident's timeline) the attempts
    of a replica that is gone, and those under its own name (a restarted container's
    process has its predecessor's host and pid), never those of a replica still running."""
    stores = [PgIncidentStore(ledger_url) for _ in range(3)]
    try:
        with psycopg.connect(ledger_url, application_name="ers serve pid 7 on alive"):
            alive = AlertLedger(stores[0].database, "ers serve pid 7 on alive")
            gone = AlertLedger(stores[1].database, "ers serve pid 8 on gone")
            starting = AlertLedger(stores[2].database, "ers serve pid 9 on again")
            for ledger in (alive, gone, starting):
                ledger.record(ledger.taker or "", "t", "firing", "A")
            lost = starting.mark_lost()
            assert len(lost) == 2, lost
            assert alive.entry(alive.taker or "", "t", "firing")["outcome"] is None  # type: ignore[index]
            for ledger in (gone, starting):
                entry = ledger.entry(ledger.taker or "", "t", "firing")
                assert entry["outcome"] == ledger_module.LOST  # type: ignore[index]
    finally:
        for store in stores:
            store.close()


def test_on_postgresql_a_start_leaves_its_own_name_to_another_process_still_under_it(
    ledger_url: str,
) -> None:
    """Two hosts with one hostname, each running ERS as pid 1 in a container: their
    replicas carry one name. A start marks lost none of what the one still running has
    under way (its next delivery would run the action again beside it)."""
    name = "ers serve pid 1 on ers"
    stores = [PgIncidentStore(ledger_url) for _ in range(2)]
    try:
        with (
            psycopg.connect(ledger_url, application_name=name),  # the replica running
            psycopg.connect(ledger_url, application_name=name),  # the start's presence
        ):
            running = AlertLedger(stores[0].database, name)
            starting = AlertLedger(stores[1].database, name)
            assert running.record("fp", "t", "firing", "A")
            assert starting.mark_lost() == []
            assert running.entry("fp", "t", "firing")["outcome"] is None  # type: ignore[index]
    finally:
        for store in stores:
            store.close()


def test_a_ledger_file_from_before_its_later_columns_gets_them(tmp_path: Path) -> None:
    """A file made before the ledger kept the alert, its taker and its last delivery: the
    columns are added at start, and a firing delivered again is known as such."""
    path = tmp_path / "incidents.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(
            "CREATE TABLE alert_ledger (fingerprint TEXT NOT NULL, starts_at TEXT NOT NULL,"
            " status TEXT NOT NULL, alertname TEXT NOT NULL, received_at REAL NOT NULL,"
            " deliveries INTEGER NOT NULL DEFAULT 1, incident_id TEXT, outcome TEXT,"
            " PRIMARY KEY (fingerprint, starts_at, status))"
        )
        db.commit()
    store = IncidentStore(path)
    try:
        ledger = AlertLedger(store.database)
        columns = {row["name"] for row in store.database.rows("PRAGMA table_info(alert_ledger)")}
        assert {"alert", "taker", "delivered_at"} <= columns
        assert ledger.record("f1", "2026-12-05T10:00:00+00:00", "firing", "A", "{}") is True
        assert ledger.record("f1", "2026-12-05T10:00:00+00:00", "firing", "A", "{}") is False
    finally:
        store.close()


async def test_an_outcome_the_store_took_late_is_written_once_it_is_free(tmp_path: Path) -> None:
    """A lock held on the incident store past its write timeout (5 s) as an alert's action
    ended: before, its outcome was never written (an exception no one retrieved), and the
    alert's next deliveries were duplicates of an attempt that seemed to run on."""
    store = IncidentStore(tmp_path / "incidents.sqlite3")
    ledger = AlertLedger(store.database)
    assert ledger.record("f1", "2026-12-07T10:00:00+00:00", "firing", "BackupStale")
    path = tmp_path / "incidents.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # as a person's sqlite3 shell would hold it
    release = threading.Timer(6.0, holder.rollback)
    release.start()
    try:
        await ledger_module.finish_outcome(
            ledger, "f1", "2026-12-07T10:00:00+00:00", "firing", None, "emergency_backup: success"
        )
    finally:
        release.join()
        holder.close()
    entry = ledger.entry("f1", "2026-12-07T10:00:00+00:00", "firing")
    assert entry is not None and entry["outcome"] == "emergency_backup: success"
    store.close()
