"""A repository that can no longer be written (or opened), through a real `ers serve` and the real
health and status say so instead of "healthy", and a backup fails naming the repository and
what to do, not with the tail of restic's stack trace; a test rollback, which only reads,
still works."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ErsProcess

pytestmark = pytest.mark.integration


def one_incident(http: httpx.Client, component: str) -> dict[str, object]:
    """The one incident of ``component``, once the refusals' spans are in (bounded wait)."""
    deadline = time.monotonic() + 10
    while not (
        found := http.get("/api/emergency/incidents", params={"component": component}).json()[
            "incidents"
        ]
    ):
        assert time.monotonic() < deadline, "no incident"
        time.sleep(0.1)
    time.sleep(1.0)  # the spans of the later refusals too
    found = http.get("/api/emergency/incidents", params={"component": component}).json()
    assert len(found["incidents"]) == 1, found
    return found["incidents"][0]


def test_a_read_only_repository_is_unhealthy_and_named_when_a_backup_fails(
    backups_service: ErsProcess, tmp_path: Path, immutable: list[Path]
) -> None:
    locks = tmp_path / "repo" / "locks"
    with httpx.Client(base_url=backups_service.url, timeout=180) as http:
        made = http.post("/api/emergency/backups/create", json={})
        assert made.status_code == 200, made.text
        backup_id = made.json()["backupId"]
        done = subprocess.run(["chattr", "+i", str(locks)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"this filesystem cannot make folders immutable: {done.stderr.strip()}")
        immutable.append(locks)

        check = http.get("/api/emergency/health").json()["checks"]["repository"]
        assert check["status"] == "unhealthy", check
        assert "cannot be written" in check["reason"]
        status = http.get("/api/emergency/status").json()["backups"]
        assert "cannot be written" in status["error"]

        # Before: restic retried its lock file for 45 s and the reply ended in its stack
        # trace; a check or prune said "restic unlock did not finish within 60 s".
        for path in ("create", "check", "prune"):
            refused = http.post(f"/api/emergency/backups/{path}", json={})
            assert refused.status_code == 503, (path, refused.text)
            detail = refused.json()["detail"]
            assert "cannot be written" in detail and str(tmp_path / "repo") in detail, detail
            assert "github.com" not in detail
        # Before: a rollback restored the snapshot and paused the writers, then failed at
        # its safety snapshot, and each refusal opened an incident of its own.
        body = {"backupId": backup_id, "confirm": True, "reason": "r", "components": ["budgets"]}
        rolled = http.post("/api/emergency/rollback", json=body)
        assert rolled.status_code == 503, rolled.text
        assert "cannot be written" in rolled.json()["detail"], rolled.text
        assert "safety" not in rolled.json()["detail"], rolled.text
        assert one_incident(http, "backups")["status"] == "open"
        # A test rollback only reads its snapshot, which needs no lock: it was refused too
        # (each component "cannot be written" in a drill), where the snapshots are sound.
        tried = http.post("/api/emergency/backups/test-rollback", json={"backupId": backup_id})
        assert tried.status_code == 200, tried.text
        checked = {name: c["verification"] for name, c in tried.json()["components"].items()}
        assert checked and all(v["integrity"] == "ok" for v in checked.values()), checked

        subprocess.run(["chattr", "-i", str(locks)], check=True)
        check = http.get("/api/emergency/health").json()["checks"]["repository"]
        assert check["status"] == "healthy", check


def test_a_repository_the_password_no_longer_opens_is_unavailable_in_the_status(
    backups_service: ErsProcess, tmp_path: Path
) -> None:
    """A local repository's status looks at its config file, which opens without the
    password: the count was shown ("backups 1, last ...") while the repository check found
    that the password no longer opens it, and every backup failed on it. What restic last
    found, by the check or by the status's own look every 10 s, is what the status says."""
    password = tmp_path / "restic-password"
    good = password.read_text()
    with httpx.Client(base_url=backups_service.url, timeout=180) as http:
        assert http.post("/api/emergency/backups/create", json={}).status_code == 200
        status = http.get("/api/emergency/status").json()["backups"]
        assert status.get("error") is None and status["available"] == 1, status
        password.write_text("not-the-password\n")
        check = http.get("/api/emergency/health").json()["checks"]["repository"]
        assert check["status"] == "unhealthy", check
        status = http.get("/api/emergency/status").json()["backups"]
        assert "does not open the repository" in (status.get("error") or ""), status
        assert status["available"] == 0, status
        assert "not-the-password" not in str(status)
        refused = http.post("/api/emergency/backups/create", json={})
        assert refused.status_code == 503, refused.text

        password.write_text(good)
        check = http.get("/api/emergency/health").json()["checks"]["repository"]
        assert check["status"] == "healthy", check
        status = http.get("/api/emergency/status").json()["backups"]
        assert status.get("error") is None and status["available"] == 1, status
