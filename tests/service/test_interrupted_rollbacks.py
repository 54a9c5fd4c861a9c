"""A rollback whose process stopped before its outcome was written (a kill -9, a crash) is in
the audit trail by its start alone; the next start on its host adds ``rollback_interrupted``
naming it, once, and leaves alone what still runs, what finished and what another host ran.
On SQLite and on PostgreSQL, where every replica shares the trail."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest

from service.backups.cut_off import (
    INTERRUPTED,
    SWAPPED_THEN_CUT,
    keep_looking,
    record_interrupted,
    record_interrupted_at_start,
)
from service.backups.rollbacks import Rollbacks
from service.errors import StoreUnavailable
from service.fleet.presence import OFFLINE_ROLE
from service.fleet.schema import COMPONENT as FLEET
from service.fleet.schema import MIGRATIONS as FLEET_STATE
from service.incidents.audit import (
    RECENT_ROLLBACKS,
    ROLLBACK_OUTCOMES,
    ROLLBACK_STARTED,
    ROLLBACK_SWAPPED,
    ROLLBACKS_ENDED,
    STARTED_ROLLBACKS,
    AuditLog,
    rollback_run,
)
from service.incidents.service import MIGRATIONS as INCIDENT_STATE
from service.incidents.store import IncidentStore
from service.incidents.store_pg import PgIncidentStore
from service.stores.session_names import presence_name, session_name
from tests.pg import apply_migrations


@pytest.fixture(params=["sqlite", "postgresql"])
def audit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuditLog]:
    if request.param == "sqlite":
        store: IncidentStore = IncidentStore(tmp_path / "incidents.sqlite3")
    else:
        url = request.getfixturevalue("pg_url")
        apply_migrations(url, INCIDENT_STATE)
        store = PgIncidentStore(url)
    try:
        yield AuditLog(store.database)
    finally:
        store.close()


def a_pid_gone() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout)


def started(audit: AuditLog, reason: str, *, here: bool = False, **process: object) -> str:
    """A rollback's start in the trail: by this process with ``here``, else as another
    process wrote it (by default one of this host under this process's pid: the process
    before a container's restart)."""
    if here:
        run = rollback_run() | process
    else:
        run = {"run": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        run |= process
    audit.record("admin", ROLLBACK_STARTED, {"backupId": "abc123", "reason": reason} | run)
    return str(run["run"])


def test_a_rollback_whose_process_is_gone_is_recorded_interrupted_once(audit: AuditLog) -> None:
    cut = started(audit, "cut by a kill", pid=a_pid_gone())
    restarted = started(audit, "ers again under the same pid")  # a container's restart
    started(audit, "running in a live process", pid=os.getppid())
    elsewhere = started(audit, "another host's", host=f"not-{socket.gethostname()}", pid=1234)
    finished = started(audit, "finished", pid=a_pid_gone())
    audit.record("admin", "rollback", {"run": finished, "error": None})
    audit.record("admin", ROLLBACK_STARTED, {"backupId": "old", "reason": "before runs"})

    recorded = record_interrupted(audit)

    # On SQLite the trail is this host's; on PostgreSQL another host's replica that has no
    # session and no presence stamp in the fleet's database is gone too.
    runs, reasons = [cut, restarted], ["cut by a kill", "ers again under the same pid"]
    if audit.shared:
        runs, reasons = [cut, restarted, elsewhere], [*reasons, "another host's"]
    assert [entry["run"] for entry in recorded] == runs
    assert [entry["reason"] for entry in recorded] == reasons
    assert all(
        entry["startedBy"] == "admin" and entry["outcome"] == INTERRUPTED for entry in recorded
    )
    # A time as every other time of the trail's replies, not seconds since the epoch.
    assert all(str(entry["startedAt"]).endswith("Z") for entry in recorded), recorded
    newest = audit.recent(len(runs))
    assert [(e["actor"], e["action"], e["detail"]["run"]) for e in newest] == [
        ("ers", "rollback_interrupted", run) for run in reversed(runs)
    ]
    assert newest[-1]["detail"]["backupId"] == "abc123"
    assert record_interrupted(audit) == []  # the next start finds each one told already


def test_an_outcome_the_trail_could_not_take_is_written_once_it_can(
    audit: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback that failed while the database was down: its outcome was lost, and the
    next start called it cut off by a kill or a crash."""
    rollbacks = Rollbacks(None, None, audit)  # type: ignore[arg-type]
    request = SimpleNamespace(
        backupId="abc123", beforeIncident=None, reason="bad deploy", components=["budgets"]
    )
    run = started(audit, "bad deploy")
    write = audit.record

    def down(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("the database is down")

    monkeypatch.setattr(audit, "record", down)
    said = rollbacks.record(request, None, "failed at step 'restore'", run)  # type: ignore[arg-type]
    assert said is not None and "not in the audit trail yet" in said
    assert "written once the trail can be written again" in said
    rollbacks.write_unwritten()  # still down: kept
    monkeypatch.setattr(audit, "record", write)
    rollbacks.write_unwritten()
    (outcome,) = [e for e in audit.recent(5) if e["action"] == "rollback"]
    assert outcome["detail"]["run"] == run
    assert outcome["detail"]["error"] == "failed at step 'restore'"
    rollbacks.write_unwritten()  # written once
    assert [e["action"] for e in audit.recent(5)].count("rollback") == 1
    assert record_interrupted(audit) == []


def test_an_outcome_written_late_of_a_rollback_with_no_run_is_named_by_its_target(
    audit: AuditLog, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its start could not be written either (no run): the log said "rollback None"."""
    rollbacks = Rollbacks(None, None, audit)  # type: ignore[arg-type]
    request = SimpleNamespace(
        backupId="abc123", beforeIncident=None, reason="bad deploy", components=["budgets"]
    )
    write = audit.record

    def down(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("the database is down")

    monkeypatch.setattr(audit, "record", down)
    rollbacks.record(request, None, "failed at step 'restore'", None)  # type: ignore[arg-type]
    monkeypatch.setattr(audit, "record", write)
    rollbacks.write_unwritten()
    assert "the outcome of rollback to abc123 is in the audit trail now" in caplog.text
    assert "rollback None" not in caplog.text


def test_the_words_for_a_cut_off_rollback_hold_on_postgresql_where_a_committed_swap_stays() -> None:
    """Before: "a swap it had begun is undone at the next start", false on PostgreSQL."""
    assert "on SQLite a swap it had begun is undone at the next start" in INTERRUPTED
    assert "on PostgreSQL while a commit's outcome was unknown (a swap that committed stays)" in (
        INTERRUPTED
    )


@pytest.fixture
def fleet_audit(pg_url: str) -> Iterator[AuditLog]:
    apply_migrations(pg_url, INCIDENT_STATE | {FLEET: FLEET_STATE})
    store = PgIncidentStore(pg_url)
    try:
        yield AuditLog(store.database)
    finally:
        store.close()


def test_another_hosts_rollback_is_left_alone_while_its_replica_is_seen(
    fleet_audit: AuditLog, pg_url: str
) -> None:
    """Before: another host's rollback was recorded only by a start on that host, so one cut
    off on a host whose replica came back elsewhere (a container moved, a new pod) stayed
    without an outcome for good. Now the fleet's database tells: a replica with a session,
    or whose presence stamp is recent, still runs."""
    other = f"not-{socket.gethostname()}"
    with_session = started(fleet_audit, "its replica is connected", host=other, pid=41)
    stamped = started(fleet_audit, "its replica stamped just now", host=other, pid=42)
    offline = started(fleet_audit, "an offline rollback running there", host=other, pid=43)
    gone = started(fleet_audit, "its replica left no trace", host=other, pid=44)
    stamp = "INSERT INTO ers_fleet.stamps (key, value, updated_at) VALUES (%s, '{{}}', {})"
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute(stamp.format("now()"), (f"presence:{presence_name(f'{other}:42')}",))
    names = [presence_name(f"{other}:41"), session_name(OFFLINE_ROLE, 43, other)]
    with (
        psycopg.connect(pg_url, application_name=names[0]),
        psycopg.connect(pg_url, application_name=names[1]),
    ):
        recorded = record_interrupted(fleet_audit)
    assert [entry["run"] for entry in recorded] == [gone]
    assert recorded[0]["host"] == other
    # Once their sessions are gone, the next start records them; the stamp is still recent.
    sessions_gone(pg_url, names)
    assert [e["run"] for e in record_interrupted(fleet_audit)] == [with_session, offline]
    told = fleet_audit.recent(20)
    assert stamped not in {e["detail"]["run"] for e in told if e["action"] != ROLLBACK_STARTED}


def sessions_gone(url: str, names: list[str]) -> None:
    """Wait (10 s at most) until the server has ended the sessions named ``names``."""
    with psycopg.connect(url, autocommit=True) as db:
        for _ in range(200):
            query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY(%s)"
            row = db.execute(query, (names,)).fetchone()
            if row is not None and row[0] == 0:
                return
            time.sleep(0.05)
    raise AssertionError(f"the sessions {names} are still there")


def test_two_starts_at_once_record_each_cut_off_rollback_once(
    fleet_audit: AuditLog, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas starting together, each with its own pool: each rollback is recorded
    once, not once by each (the look at a process takes a while: both looks overlap)."""
    cut = [started(fleet_audit, f"cut {n}", pid=a_pid_gone()) for n in range(3)]

    def slow_look(pid: int) -> bool:
        time.sleep(0.1)
        return False

    monkeypatch.setattr("service.backups.cut_off.process_is_running", slow_look)
    other = PgIncidentStore(pg_url)
    try:
        trails = [fleet_audit, AuditLog(other.database)]
        with ThreadPoolExecutor(2) as pool:
            found = list(pool.map(record_interrupted, trails))
    finally:
        other.close()
    assert sorted(e["run"] for told in found for e in told) == sorted(cut)
    entries = [e for e in fleet_audit.recent(20) if e["action"] == "rollback_interrupted"]
    assert sorted(e["detail"]["run"] for e in entries) == sorted(cut)


def test_a_rollback_under_this_hostname_is_left_alone_while_the_fleet_sees_its_process(
    fleet_audit: AuditLog, pg_url: str
) -> None:
    """Hosts may share a hostname (and containers pid 1). Before: a rollback another such
    host's replica was running, its pid not running here, was recorded interrupted by every
    replica's look; and one under this process's own host and pid was taken for its
    predecessor's while a replica of the other host still ran it."""
    host, other = socket.gethostname(), a_pid_gone()
    there = started(fleet_audit, "run by a replica of another host", host=host, pid=other)
    predecessor = started(fleet_audit, "under this process's own name")
    with (
        psycopg.connect(pg_url, application_name=presence_name(f"{host}:{other}")),
        psycopg.connect(pg_url, application_name=presence_name()),  # this process's
        psycopg.connect(pg_url, application_name=presence_name()),  # the other host's
    ):
        assert record_interrupted(fleet_audit) == []
    # The server ends a closed connection's session a moment later.
    sessions_gone(pg_url, [presence_name(f"{host}:{other}"), presence_name()])
    recorded = record_interrupted(fleet_audit)
    assert [entry["run"] for entry in recorded] == [there, predecessor]


def test_this_process_s_own_rollback_is_left_alone_whatever_the_clock_says(
    fleet_audit: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a rollback of this process's host and pid was its own only when the trail's
    time of its start was after the start's look; with the clock stepped back since (an NTP
    step), every look recorded the rollback it was running as cut off."""
    record_interrupted(fleet_audit)  # the start's look
    stepped_back = time.time() - 3600
    monkeypatch.setattr("service.incidents.audit.time.time", lambda: stepped_back)
    running = started(fleet_audit, "running in this process", here=True)
    monkeypatch.undo()
    assert record_interrupted(fleet_audit) == []
    assert running not in interrupted(fleet_audit)


def interrupted(audit: AuditLog) -> list[str]:
    return [e["detail"]["run"] for e in audit.recent(50) if e["action"] != ROLLBACK_STARTED]


async def until_recorded(audit: AuditLog, runs: list[str]) -> None:
    """Wait (10 s at most) until the trail records every run of ``runs`` as interrupted."""
    for _ in range(200):
        if set(runs) <= set(await asyncio.to_thread(interrupted, audit)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not recorded: {set(runs) - set(interrupted(audit))}")


async def test_the_looks_after_the_start_leave_this_process_s_own_rollback_alone(
    fleet_audit: AuditLog,
) -> None:
    """Before: the second look, 16 s after the start, counted a rollback this process had
    begun since as cut off (its pid is this process's, which at the start stands for the
    process before a restart), and the trail said it was interrupted while it ran."""
    restarted = started(fleet_audit, "ers again under the same pid")
    async with AsyncExitStack() as stack:
        await record_interrupted_at_start(fleet_audit, None)
        running = started(fleet_audit, "running in this process", here=True)
        elsewhere = started(fleet_audit, "cut off since", host=f"not-{socket.gethostname()}")
        keep_looking(stack, fleet_audit, None, every_s=0.05)
        await until_recorded(fleet_audit, [elsewhere])
    assert sorted(interrupted(fleet_audit)) == sorted([restarted, elsewhere])
    assert running not in interrupted(fleet_audit)


async def test_a_running_replica_records_a_peers_rollback_once_the_peer_is_gone(
    fleet_audit: AuditLog, pg_url: str
) -> None:
    """Before: only a start looked (and once more 16 s after it), so a replica that kept
    running never recorded a rollback whose replica was killed in the middle of it, and the
    trail kept it without an outcome until some replica started. Now a running replica
    looks while the trail holds a rollback with no outcome, and records it once the peer
    is gone, never while it runs."""
    other = f"not-{socket.gethostname()}"
    async with AsyncExitStack() as stack:
        await record_interrupted_at_start(fleet_audit, None)
        keep_looking(stack, fleet_audit, None, every_s=0.05)
        name = presence_name(f"{other}:51")
        with psycopg.connect(pg_url, application_name=name):
            peer = started(fleet_audit, "a peer's rollback, killed", host=other, pid=51)
            # What each look does, while the peer runs: nothing.
            assert await asyncio.to_thread(record_interrupted, fleet_audit) == []
        await until_recorded(fleet_audit, [peer])
    assert interrupted(fleet_audit) == [peer]


def test_the_looks_read_the_rollbacks_by_their_action_not_the_whole_trail(
    fleet_audit: AuditLog, pg_url: str
) -> None:
    """Every replica reads the trail's rollbacks every few seconds, and the trail is never
    pruned. Before: each read walked every entry of the trail, twice."""
    started(fleet_audit, "a rollback among many other entries")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ers_incidents.audit (at, actor, action, detail)"
            " SELECT n, 'admin', 'isolate', '{}' FROM generate_series(1, 20000) AS n"
        )
        conn.execute("ANALYZE ers_incidents.audit")
        for sql, params in (
            (STARTED_ROLLBACKS, (ROLLBACK_STARTED, RECENT_ROLLBACKS)),
            (ROLLBACKS_ENDED, (*ROLLBACK_OUTCOMES, 2 * RECENT_ROLLBACKS)),
        ):
            query = sql.replace("?", "%s").replace("FROM audit", "FROM ers_incidents.audit")
            plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN {query}", params))
            assert "Index Cond: (action =" in plan, plan


def pg_rollbacks(rollback: Any, add_timeline: Any) -> Rollbacks:
    """Automatic rollbacks on PostgreSQL (one snapshot a component) over ``rollback``, on
    an incident whose timeline takes ``add_timeline``."""
    incidents = SimpleNamespace(
        get=lambda incident_id: SimpleNamespace(opened_at=1_800_000_000.0),
        add_timeline=add_timeline,
    )
    backups = SimpleNamespace(
        one_component_per_snapshot=True,
        newest_before=lambda moment, components, also: f"{components[0][:4]}0000aa",
        rollback=rollback,
        require=lambda: SimpleNamespace(index=SimpleNamespace(marks=list)),
    )
    audit = SimpleNamespace(swaps=dict)  # no swap without its record in the repository
    return Rollbacks(backups, incidents, audit)  # type: ignore[arg-type]


async def test_an_automatic_rollback_notes_each_component_as_its_swap_is_done() -> None:
    """On PostgreSQL each component's swap commits on its own: an automatic rollback a kill
    cuts off after some of them has replaced those and left the others as they were. Before,
    nothing but its end said which; each component is noted on the incident as it is done."""
    notes: list[tuple[str, str, str]] = []
    rolled: list[str] = []

    async def rollback(snapshot_id: str, components: list[str], reason: str, swapped: Any) -> Any:
        if rolled:
            raise RuntimeError("the process stopped here")
        rolled.extend(components)
        return SimpleNamespace(snapshot_id=snapshot_id, safety_snapshot_id="5afe7e00", notes=[])

    rollbacks = pg_rollbacks(
        rollback,
        lambda incident_id, kind, message, who, data=None: notes.append(
            (incident_id, kind, message)
        ),
    )
    context = SimpleNamespace(incident_id="INC_1", source="alertmanager", component="ers")
    with pytest.raises(RuntimeError):
        await rollbacks.automatic(context, "run1")  # type: ignore[arg-type]
    assert rolled == ["conversations"]
    assert notes == [
        (
            "INC_1",
            "note",
            "rollback: conversations rolled back to conv0000 (its state before in safety "
            "snapshot 5afe7e00)",
        )
    ]


async def test_a_stop_during_a_components_record_ends_an_automatic_rollback_there() -> None:
    """The stop is taken while the record is written (the rollback of that component is
    told as done) and stays asked for: the rollback went on to the other components."""
    rolled: list[str] = []

    async def rollback(snapshot_id: str, components: list[str], reason: str, swapped: Any) -> Any:
        rolled.extend(components)
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # a stop while its record is written, taken there
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(1)
        return SimpleNamespace(snapshot_id=snapshot_id, safety_snapshot_id="5afe7e00", notes=[])

    rollbacks = pg_rollbacks(rollback, lambda *args, **kwargs: None)
    context = SimpleNamespace(incident_id="INC_1", source="responder", component="budget")
    with pytest.raises(asyncio.CancelledError):
        await rollbacks.automatic(context, "run1")  # type: ignore[arg-type]
    assert rolled == ["conversations"]


def test_a_rollback_cut_off_after_swaps_names_each_components_own_snapshot(
    audit: AuditLog, caplog: pytest.LogCaptureFixture
) -> None:
    """On PostgreSQL an automatic rollback swaps a component at a time, each to a snapshot
    of its own: before, every component was said to be rolled back to the last one's."""
    run = started(audit, "automatic", pid=a_pid_gone())
    for component, target, safety in (
        ("budgets", "aaaa1111", "5afe0001"),
        ("profiles", "bbbb2222", "5afe0002"),
    ):
        swap = {"run": run, "backupId": target, "components": [component]}
        audit.record("responder", ROLLBACK_SWAPPED, swap | {"safetyBackupId": safety})

    (recorded,) = record_interrupted(audit)

    assert recorded["outcome"] == SWAPPED_THEN_CUT
    assert recorded["rolledBack"] == ["budgets", "profiles"]
    assert recorded["backupIds"] == {"budgets": "aaaa1111", "profiles": "bbbb2222"}
    assert recorded["safetyBackupIds"] == {"budgets": "5afe0001", "profiles": "5afe0002"}
    assert (
        "after its swap committed: budgets rolled back to aaaa1111 (the state before in safety"
        " snapshot 5afe0001); profiles rolled back to bbbb2222 (the state before in safety"
        " snapshot 5afe0002)"
    ) in caplog.text
