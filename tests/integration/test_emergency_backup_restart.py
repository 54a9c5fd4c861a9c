"""The emergency-backup cooldown outlives the process: after a critical failure's emergency
backup, ``ers serve`` stopped (SIGTERM or ``kill -9``) and started again on the same state
answers the failure's return with that backup instead of taking another, on SQLite and on
PostgreSQL, until the cooldown's moment; a cooldown that ended while the service was down is
not put back. Real ``ers serve`` over HTTP, real restic, a real PostgreSQL server."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import ErsProcess, start_ers

pytestmark = pytest.mark.integration

BACKUPS = {
    "ERS_BACKUPS_ENABLED": "true",
    "ERS_BACKUP_SCHEDULE_ENABLED": "false",
}
AGENTS = {"budget": ("BMA", "budget report"), "nutrition": ("NPA", "plan my meals")}


def kept_cooldown(workdir: Path, pg_url: str | None = None) -> dict[str, Any] | None:
    """The kept emergency-backup cooldown, as another reader of the store sees it."""
    if pg_url is not None:
        with psycopg.connect(pg_url) as conn:
            row = conn.execute(
                "SELECT value FROM ers_system_state.state WHERE key = 'emergency_backup'"
            ).fetchone()
        return None if row is None else dict(row[0])
    with sqlite3.connect(workdir / "data" / "system_state.sqlite3") as conn:
        found = conn.execute("SELECT value FROM state WHERE key = 'emergency_backup'").fetchone()
    return None if found is None else dict(json.loads(found[0]))


def emergency_notes(http: httpx.Client, incident_id: str) -> list[str]:
    timeline = http.get(f"/api/emergency/incidents/{incident_id}").json()["timeline"]
    return [
        entry["message"]
        for entry in timeline
        if entry["kind"] == "action_finished" and entry["data"].get("action") == "emergency_backup"
    ]


def critical_failure(http: httpx.Client, agent: str, notes_before: int = 0) -> tuple[str, str]:
    """A core failure of ``agent`` (a critical incident, whose protocol takes an emergency
    backup): the incident's id and the responder's newest note on the emergency backup."""
    alias, message = AGENTS[agent]
    fault = {"component": alias, "errorType": "system"}
    assert http.post("/api/emergency/simulate-error", json=fault).status_code == 200
    for _ in range(150):  # bounded: at most about 30 s
        http.post("/chat", json={"message": message, "userId": "ann"})
        found = http.get("/api/emergency/incidents", params={"component": agent}).json()
        if found["incidents"]:
            incident_id = str(found["incidents"][0]["id"])
            notes = emergency_notes(http, incident_id)
            if len(notes) > notes_before:
                assert http.delete("/api/emergency/simulate-error").status_code == 200
                return incident_id, notes[-1]
        time.sleep(0.2)
    raise AssertionError(f"no emergency backup was noted for a failure of {agent}")


def emergency_snapshots(http: httpx.Client) -> set[str]:
    listed = http.get("/api/emergency/backups").json()["backups"]
    return {b["backupId"][:8] for b in listed if b["reason"] == "emergency"}


def wait_kept(workdir: Path, pg_url: str | None = None) -> dict[str, Any]:
    for _ in range(100):  # the keeper writes within moments of the change
        if (record := kept_cooldown(workdir, pg_url)) is not None:
            return record
        time.sleep(0.1)
    raise AssertionError("the emergency-backup cooldown was not kept")


def start(workdir: Path, env: dict[str, str]) -> tuple[ErsProcess, httpx.Client]:
    ers = start_ers(workdir, env=env)
    ers.wait_for_backups()
    return ers, httpx.Client(base_url=ers.url, timeout=120)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_the_emergency_backup_cooldown_holds_after_a_restart(
    tmp_path: Path, sig: signal.Signals
) -> None:
    workdir = tmp_path / "ers"
    env = {**BACKUPS, "ERS_EMERGENCY_BACKUP_COOLDOWN_S": "3600"}
    ers, http = start(workdir, env)
    try:
        incident_id, note = critical_failure(http, "budget")
        taken = emergency_snapshots(http)
        assert len(taken) == 1 and f"emergency snapshot {next(iter(taken))} (" in note, note
        assert note.startswith("emergency_backup: success — "), note
        assert wait_kept(workdir)["snapshotId"][:8] in taken
    finally:
        http.close()
        ers.stop(sig)

    again, http = start(workdir, env)
    try:
        assert "resumed emergency backup cooldown" in again.log()
        # The kept minimal mode would keep the agent from being called at all.
        assert http.delete("/api/emergency/minimal-mode").status_code == 200
        same, note = critical_failure(http, "budget", notes_before=1)
        assert same == incident_id
        assert note.startswith("emergency_backup: skipped — "), note  # no snapshot taken
        assert "within the cooldown" in note and next(iter(taken)) in note, note
        assert emergency_snapshots(http) == taken  # no second emergency backup
    finally:
        http.close()
        again.stop()


def test_an_emergency_backup_cooldown_that_ended_while_down_is_not_put_back(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "ers"
    env = {**BACKUPS, "ERS_EMERGENCY_BACKUP_COOLDOWN_S": "3"}
    ers, http = start(workdir, env)
    try:
        critical_failure(http, "budget")
        taken = emergency_snapshots(http)
        until = wait_kept(workdir)["until"]
    finally:
        http.close()
        ers.stop(signal.SIGKILL)
    while time.time() <= until:
        time.sleep(0.1)

    again, http = start(workdir, env)
    try:
        assert "resumed emergency backup cooldown" not in again.log()
        assert http.delete("/api/emergency/minimal-mode").status_code == 200
        _, note = critical_failure(http, "budget", notes_before=1)
        new = emergency_snapshots(http) - taken
        assert len(new) == 1 and f"emergency snapshot {next(iter(new))} (" in note, note
    finally:
        http.close()
        again.stop()


def test_on_postgresql_the_emergency_backup_cooldown_holds_after_a_kill_9(
    tmp_path: Path, pg_url: str
) -> None:
    workdir = tmp_path / "ers"
    env = {**BACKUPS, "ERS_DATABASE_URL": pg_url, "ERS_EMERGENCY_BACKUP_COOLDOWN_S": "3600"}
    ers, http = start(workdir, env)
    try:
        _, note = critical_failure(http, "budget")
        taken = emergency_snapshots(http)
        # One snapshot per component, each named in the note.
        assert len(taken) == 5 and all(i in note for i in taken), note
        wait_kept(workdir, pg_url)
    finally:
        http.close()
        ers.stop(signal.SIGKILL)

    again, http = start(workdir, env)
    try:
        assert http.delete("/api/emergency/minimal-mode").status_code == 200
        # Another agent's critical failure: a new incident, so no replica's claim on the
        # first one's action holds it back; the cooldown alone does.
        _, note = critical_failure(http, "nutrition")
        assert note.startswith("emergency_backup: skipped — "), note
        assert "within the cooldown" in note, note
        assert emergency_snapshots(http) == taken
    finally:
        http.close()
        again.stop()
