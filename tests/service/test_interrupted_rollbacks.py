"""A rollback whose process stopped before its outcome was written (a kill -9, a crash) is in
the audit trail by its start alone; the next start on its host adds ``rollback_interrupted``
naming it, once, and leaves alone what still runs, what finished and what another host ran.
On SQLite and on PostgreSQL, where every replica shares the trail."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from service.backups.rollbacks import INTERRUPTED, Rollbacks, record_interrupted
from service.errors import StoreUnavailable
from service.incidents.audit import ROLLBACK_STARTED, AuditLog, rollback_run
from service.incidents.service import MIGRATIONS as INCIDENT_STATE
from service.incidents.store import IncidentStore
from service.incidents.store_pg import PgIncidentStore
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


def started(audit: AuditLog, reason: str, **process: object) -> str:
    run = rollback_run() | process
    audit.record("admin", ROLLBACK_STARTED, {"backupId": "abc123", "reason": reason} | run)
    return str(run["run"])


def test_a_rollback_whose_process_is_gone_is_recorded_interrupted_once(audit: AuditLog) -> None:
    cut = started(audit, "cut by a kill", pid=a_pid_gone())
    restarted = started(audit, "ers again under the same pid")  # a container's restart
    started(audit, "running in a live process", pid=os.getppid())
    started(audit, "another host's", host=f"not-{socket.gethostname()}", pid=a_pid_gone())
    finished = started(audit, "finished", pid=a_pid_gone())
    audit.record("admin", "rollback", {"run": finished, "error": None})
    audit.record("admin", ROLLBACK_STARTED, {"backupId": "old", "reason": "before runs"})

    recorded = record_interrupted(audit)

    assert [entry["run"] for entry in recorded] == [cut, restarted]
    assert [entry["reason"] for entry in recorded] == [
        "cut by a kill",
        "ers again under the same pid",
    ]
    assert all(
        entry["startedBy"] == "admin" and entry["outcome"] == INTERRUPTED for entry in recorded
    )
    # A time as every other time of the trail's replies, not seconds since the epoch.
    assert all(str(entry["startedAt"]).endswith("Z") for entry in recorded), recorded
    newest = audit.recent(2)
    assert [(e["actor"], e["action"], e["detail"]["run"]) for e in newest] == [
        ("ers", "rollback_interrupted", restarted),
        ("ers", "rollback_interrupted", cut),
    ]
    assert newest[1]["detail"]["backupId"] == "abc123"
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


def test_the_words_for_a_cut_off_rollback_hold_on_postgresql_where_a_committed_swap_stays() -> None:
    """Before: "a swap it had begun is undone at the next start", false on PostgreSQL."""
    assert "on SQLite a swap it had begun is undone at the next start" in INTERRUPTED
    assert "on PostgreSQL a swap that committed stays" in INTERRUPTED
