"""A store file whose pages SQLite finds damaged while the service runs, through a real
`ers serve`: every budget chat failed with "try again shortly" (and Retry-After) while the
stores check, the system test's store step and the readiness said the file was writable,
since the write probe touches a page of its own. The damage is remembered from the failed
call until a rollback puts another file in place."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from backup.index import tags_for
from tests.conftest import ErsProcess, fail_the_budget_agent_once, run_restic

pytestmark = pytest.mark.integration


def damage_the_budget_tables(path: Path) -> None:
    """Overwrite the root pages of the budget tables (not the probe's), after moving the
    log's pages into the file so that they are read from it."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = db.execute("PRAGMA page_size").fetchone()[0]
        roots = [
            page
            for (page,) in db.execute(
                "SELECT rootpage FROM sqlite_master WHERE tbl_name IN ('budgets', 'expenses')"
            )
        ]
    with path.open("r+b") as file:
        for page in roots:
            file.seek((page - 1) * size)
            file.write(b"\xa5" * size)


def a_snapshot_of_a_damaged_copy(tmp_path: Path) -> str:
    """A snapshot of budgets made by hand with restic from a file that is no database."""
    made = tmp_path / "made"
    made.mkdir(exist_ok=True)
    (made / "budgets.sqlite3").write_bytes(b"not a database" * 100)
    tags = [arg for tag in tags_for(["budgets"], "manual") for arg in ("--tag", tag)]
    repository, password = tmp_path / "repo", tmp_path / "restic-password"
    done = run_restic(repository, password, "backup", "--json", ".", *tags, cwd=made)
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout.splitlines()[-1])["snapshot_id"])


def test_a_damaged_store_is_named_by_the_health_and_the_system_test_until_rolled_back(
    backups_service: ErsProcess, tmp_path: Path
) -> None:
    with httpx.Client(base_url=backups_service.url, timeout=120) as http:
        said = http.post("/chat", json={"message": "set my food budget to $100", "userId": "a"})
        assert said.status_code == 200, said.text
        made = http.post("/api/emergency/backups/create", json={})
        assert made.status_code == 200, made.text
        damage_the_budget_tables(tmp_path / "data" / "budgets.sqlite3")

        failed = http.post("/chat", json={"message": "budget report", "userId": "a"})
        assert failed.status_code == 503, failed.text
        detail = failed.json()["detail"]
        assert "the budgets store is damaged (database disk image is malformed)" in detail
        assert "--components budgets" in detail and "try again" not in detail, detail
        assert "retry-after" not in failed.headers
        stores = http.get("/api/emergency/health").json()["checks"]["stores"]
        assert stores["status"] == "unhealthy", stores
        assert "is damaged (database disk image is malformed)" in stores["figures"]["budgets"]
        tested = http.post("/api/emergency/test-system").json()
        assert "store:budgets" in tested["failedSteps"], tested
        # Before: a snapshot of the damaged pages, exit 0, listed as a restore point.
        backup = http.post("/api/emergency/backups/create", json={"type": "budgets"})
        assert backup.status_code == 503, backup.text
        assert "budgets.sqlite3 is damaged (" in backup.json()["detail"], backup.text
        assert "not backed up" in backup.json()["detail"], backup.text
        # A rollback turned away reopens the same file: still damaged (before: "writable").
        unusable = a_snapshot_of_a_damaged_copy(tmp_path)
        assert http.post("/api/emergency/backups/refresh").status_code == 200
        refused = http.post(
            "/api/emergency/rollback", json={"backupId": unusable, "confirm": True, "reason": "r"}
        )
        assert refused.status_code == 409, refused.text
        stores = http.get("/api/emergency/health").json()["checks"]["stores"]
        assert "is damaged" in stores["figures"]["budgets"], stores

        rolled = http.post(
            "/api/emergency/rollback",
            json={"backupId": made.json()["backupId"], "components": ["budgets"]}
            | {"confirm": True, "reason": "damaged"},
        )
        assert rolled.status_code == 200, rolled.text
        # Its safety snapshot keeps the damaged pages, which no rollback can put back.
        assert rolled.json()["keptAsFound"] == ["budgets"], rolled.text
        back = http.post(
            "/api/emergency/rollback",
            json={"backupId": rolled.json()["safetyBackupId"], "confirm": True, "reason": "r"},
        )
        assert back.status_code == 409, back.text
        assert "damaged when the snapshot was taken; leave it out with --components" in back.text
        report = http.post("/chat", json={"message": "budget report", "userId": "a"})
        assert report.status_code == 200, report.text
        stores = http.get("/api/emergency/health").json()["checks"]["stores"]
        assert stores["figures"]["budgets"] == "writable", stores
        tested = http.post("/api/emergency/test-system").json()
        assert "store:budgets" not in tested["failedSteps"], tested


def test_a_rollback_to_a_snapshot_holding_a_damaged_copy_is_refused_not_an_incident(
    backups_service: ErsProcess, tmp_path: Path
) -> None:
    """The copy was damaged when the snapshot was taken (its checksum matches): before, a
    503 "failed at step 'verify'" naming Python values (checksum None), and a high database
    incident (the words "not a database") that put the system in degraded."""
    damaged = a_snapshot_of_a_damaged_copy(tmp_path)
    with httpx.Client(base_url=backups_service.url, timeout=120) as http:
        assert http.post("/api/emergency/backups/refresh").status_code == 200
        refused = http.post(
            "/api/emergency/rollback",
            json={"backupId": damaged, "confirm": True, "reason": "r"},
        )
        assert refused.status_code == 409, refused.text
        assert refused.json()["detail"] == (
            f"snapshot {damaged[:8]} holds a copy SQLite cannot read (budgets: unreadable: file "
            "is not a database, no checksum recorded): it was damaged when the snapshot was "
            "taken; "
            "pick an older snapshot (`ers backup test-rollback ID` checks one)"
        )
        # A failure after it, taken by the same pipeline after the refusal's span: the only
        # incident there is.
        fail_the_budget_agent_once(http)
        for _ in range(100):
            listed = http.get("/api/emergency/incidents").json()["incidents"]
            if listed:
                break
            time.sleep(0.1)
        assert [i["component"] for i in listed] == ["budget"], listed
