"""With real uvicorn: a state store that cannot be written makes the stores check cross its
line; that is one incident, ``health.stores``, however often health answers 503, and never
one about the health endpoint. Once the store is writable and the check has been healthy
for the set time, the incident resolves by itself."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from tests.conftest import start_ers

T = TypeVar("T")
# Backups on, none scheduled, the repository checked every half second.
CHECKED_BACKUPS = {
    "ERS_BACKUPS_ENABLED": "true",
    "ERS_BACKUP_SCHEDULE_ENABLED": "false",
    "ERS_HEALTH_CHECK_INTERVAL_S": "0.5",
}


def wait_for(predicate: Callable[[], T], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.2)


def test_an_unwritable_store_is_one_incident_resolved_after_recovery(
    tmp_path: Path, immutable: list[Path]
) -> None:
    ers = start_ers(
        tmp_path / "ers",
        env={"ERS_HEALTH_CHECK_INTERVAL_S": "0.5", "ERS_HEALTH_INCIDENT_RESOLVE_AFTER_S": "2"},
    )
    budgets = tmp_path / "ers" / "data" / "budgets.sqlite3"
    # The main file and its write-ahead log; the shared-memory index must stay writable.
    targets = [budgets, budgets.with_name(budgets.name + "-wal")]
    try:
        with httpx.Client(base_url=ers.url, timeout=10) as http:
            done = subprocess.run(
                ["chattr", "+i", *map(str, targets)], capture_output=True, text=True
            )
            if done.returncode != 0:
                pytest.skip(f"this filesystem cannot make files immutable: {done.stderr.strip()}")
            immutable.extend(targets)
            for _ in range(3):
                reply = http.get("/api/emergency/health")
                assert reply.status_code == 503
                assert reply.json()["checks"]["stores"]["status"] == "unhealthy"

            def incidents() -> list[dict]:
                return http.get("/api/emergency/incidents?limit=100").json()["incidents"]

            raised = wait_for(
                lambda: [i for i in incidents() if i["spanName"] == "health.stores"], 10
            )
            assert [i for i in incidents() if i["spanName"] != "health.stores"] == []
            assert len(raised) == 1, incidents()
            (incident,) = raised
            assert incident["message"] == "1 of 5 state stores not writable"
            assert incident["count"] >= 3

            subprocess.run(["chattr", "-i", *map(str, targets)], check=True)
            immutable.clear()
            assert http.get("/api/emergency/health").status_code == 200

            def resolved() -> dict | None:
                found = http.get(f"/api/emergency/incidents/{incident['id']}").json()
                return found if found["status"] == "resolved" else None

            detail = wait_for(resolved, 20)
            assert detail, http.get(f"/api/emergency/incidents/{incident['id']}").json()
            last = detail["timeline"][-1]
            assert last["who"] == "health"
            assert "stores check has been healthy for" in last["message"]
            assert [i for i in incidents() if i["status"] != "resolved"] == []
    finally:
        assert ers.stop() == 0


def test_a_repository_moved_away_is_one_incident_for_the_health_check_and_a_check(
    tmp_path: Path,
) -> None:
    """The health check finds the repository gone; an operator's `backup check` then fails on
    it too. Both tell the same error, so the operator sees one incident, not a second one in
    restic's words."""
    workdir = tmp_path / "ers"
    workdir.mkdir()
    (workdir / "restic-password").write_text("moved-repository\n")
    ers = start_ers(workdir, env=CHECKED_BACKUPS)
    try:
        ers.wait_for_backups()
        (workdir / "repo").rename(tmp_path / "moved-away")
        with httpx.Client(base_url=ers.url, timeout=60) as http:

            def incidents() -> list[dict]:
                return http.get("/api/emergency/incidents?limit=100").json()["incidents"]

            def gone() -> list[dict]:
                return [i for i in incidents() if "is gone from" in i["message"]]

            # (A check that was reading the repository as it went may first time out: restic
            # retries a read that fails midway. That is another incident, of the stuck check.)
            (seen,) = wait_for(gone, 30)
            check = http.post("/api/emergency/backups/check", json={})
            assert check.status_code == 503
            assert "is gone from" in check.json()["detail"]
            assert wait_for(lambda: gone()[0]["count"] > seen["count"], 10)
            assert [i["id"] for i in gone()] == [seen["id"]]
            # restic's own words for a missing repository open no incident of their own
            # (waited for: the check's span reaches the incidents a moment after its reply).
            bare = wait_for(
                lambda: [i for i in incidents() if "no restic repository" in i["message"]], 3
            )
            assert not bare, [(i["spanName"], i["message"]) for i in incidents()]
    finally:
        ers.stop()


def test_a_wrong_password_is_one_incident_for_the_health_check_and_the_requests(
    tmp_path: Path,
) -> None:
    """The repository check and the requests that answer 503 for the same wrong password
    report one failure, classified alike: one incident, counted by each."""
    workdir = tmp_path / "ers"
    workdir.mkdir()
    subprocess.run(
        ["restic", "init", "-r", str(workdir / "repo"), "--password-file", "/dev/stdin"],
        input=b"the-first-password\n",
        check=True,
        capture_output=True,
        timeout=120,
    )
    (workdir / "restic-password").write_text("another-password\n")
    (workdir / "restic-password").chmod(0o600)
    ers = start_ers(workdir, env=CHECKED_BACKUPS)
    try:
        with httpx.Client(base_url=ers.url, timeout=60) as http:

            def wrong() -> list[dict]:
                found = http.get("/api/emergency/incidents?limit=100").json()["incidents"]
                return [i for i in found if "does not open the repository" in i["message"]]

            (seen,) = wait_for(wrong, 30)
            for _ in range(2):
                assert http.post("/api/emergency/backups/create", json={}).status_code == 503
                assert http.get("/api/emergency/backups").status_code == 503
            # Before: a second incident, "system" where the check's is "network".
            assert wait_for(lambda: wrong()[0]["count"] >= seen["count"] + 4, 10)
            assert [i["id"] for i in wrong()] == [seen["id"]]
    finally:
        ers.stop()


def test_requests_a_changed_password_refuses_count_in_the_repository_checks_incident(
    tmp_path: Path,
) -> None:
    """On a service that had reached its repository, a password file that stops opening it
    is one cause: every refused operation (a rollback too, by its failed step's cause) answers
    503 naming it and counts in the metrics, and joins the repository check's incident
    instead of opening one of its own."""
    workdir = tmp_path / "ers"
    # The checks run when asked (GET /health), so that their spans leave the requests' trace
    # ids among the incident's most recent ones.
    ers = start_ers(workdir, env={**CHECKED_BACKUPS, "ERS_HEALTH_CHECK_INTERVAL_S": "3600"})
    try:
        ers.wait_for_backups()
        with httpx.Client(base_url=ers.url, timeout=60) as http:
            created = http.post("/api/emergency/backups/create", json={})
            assert created.status_code == 200, created.text
            snapshot = created.json()["backupId"]
            (workdir / "restic-password").write_text("no-longer-the-password\n")

            def incidents() -> list[dict]:
                return http.get("/api/emergency/incidents?limit=100").json()["incidents"]

            def wrong() -> list[dict]:
                return [i for i in incidents() if "does not open the repository" in i["message"]]

            health = http.get("/api/emergency/health").json()
            assert health["checks"]["repository"]["status"] == "unhealthy", health
            (seen,) = wait_for(wrong, 10)

            refused = [
                ("POST", "/api/emergency/backups/create", {}),
                ("POST", "/api/emergency/backups/test-rollback", {"backupId": snapshot}),
                (
                    "POST",
                    "/api/emergency/rollback",
                    {"backupId": snapshot, "confirm": True, "reason": "walk"},
                ),
                ("POST", "/api/emergency/backups/check", {}),
                ("POST", "/api/emergency/backups/prune", {}),
                ("POST", "/api/emergency/backups/refresh", {}),
                ("GET", f"/api/emergency/backups/{snapshot}", None),
            ]
            traces = []
            for number, (method, path, body) in enumerate(refused, start=1):
                trace_id = f"{number:032x}"
                traces.append(trace_id)
                reply = http.request(
                    method, path, json=body, headers={"traceparent": f"00-{trace_id}-{1:016x}-01"}
                )
                assert reply.status_code == 503, (path, reply.text)
                assert "does not open the repository" in reply.json()["detail"], path

            def placed() -> bool:
                found = {t for i in incidents() for t in i["traceIds"]}
                return all(t in found for t in traces)

            assert wait_for(placed, 20), incidents()
            # Before: a medium "system" incident of the requests (WrongPassword), and one more
            # of the rollback's failed step, beside the check's high "network" one.
            backups = [i for i in incidents() if i["component"] == "backups"]
            assert [i["id"] for i in backups] == [seen["id"]], backups
            assert set(traces) <= set(backups[0]["traceIds"])
            # (The rollback's safety snapshot may meet the password too, before the restore.)
            metrics = dict(
                line.rsplit(" ", 1) for line in http.get("/metrics").text.splitlines() if line
            )
            assert float(metrics['ers_backup_failures_total{reason="wrong_password"}']) >= 1
            assert metrics['ers_rollbacks_total{result="failure"}'] == "1.0"
            assert backups[0]["classification"]["type"] == "auth", backups  # was "network"
            # The password file made a folder: the same problem of access, the same incident.
            (workdir / "restic-password").unlink()
            (workdir / "restic-password").mkdir()
            folder = http.post("/api/emergency/backups/create", json={})
            assert folder.status_code == 503 and "cannot be read" in folder.text, folder.text
            assert http.get("/api/emergency/health").json()["checks"]["repository"]["status"] == (
                "unhealthy"
            )
            count = backups[0]["count"]

            def counted() -> bool:
                found = [i for i in incidents() if i["component"] == "backups"]
                return [i["id"] for i in found] == [seen["id"]] and found[0]["count"] > count

            assert wait_for(counted, 20), incidents()
    finally:
        ers.stop()
