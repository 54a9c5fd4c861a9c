"""A full disk under a real `ers serve` and the real restic (a 5 MB tmpfs holds the data
directory, the repository and the backups' working folder): a backup says the disk is full,
and a rollback that fails says so and that the live state is unchanged, even though the audit
trail on that disk cannot record it."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ErsProcess, start_ers
from tests.integration.test_cli import BACKUPS_ON

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"a small tmpfs cannot be mounted here: {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture
def service(tmp_path: Path, small_disk: Path) -> Iterator[ErsProcess]:
    env = {
        **BACKUPS_ON,
        "ERS_DATA_DIR": str(small_disk / "data"),
        "ERS_RESTIC_REPOSITORY": str(small_disk / "repo"),
    }
    proc = start_ers(tmp_path / "ers", env=env)
    proc.wait_for_backups()
    yield proc
    proc.stop()


def fill(disk: Path, name: str) -> Path:
    filler = disk / name
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    return filler


def budgets(http: httpx.Client) -> str:
    reply = http.post("/chat", json={"message": "budget report", "userId": "full"})
    return str(reply.json()["response"])


def test_a_full_disk_is_named_and_a_failed_rollback_says_the_state_is_unchanged(
    service: ErsProcess, small_disk: Path
) -> None:
    with httpx.Client(base_url=service.url, timeout=180) as http:
        http.post("/chat", json={"message": "set my food budget to $100", "userId": "full"})
        made = http.post("/api/emergency/backups/create", json={})
        assert made.status_code == 200, made.text
        backup_id = made.json()["backupId"]
        http.post("/chat", json={"message": "set my food budget to $300", "userId": "full"})
        fillers = [fill(small_disk, "filler")]

        refused = http.post("/api/emergency/backups/create", json={})
        assert refused.status_code == 503, refused.text
        said = refused.json()["detail"]
        # Before: "could not copy …budgets.sqlite3 (database or disk is full): check that it
        # is a readable SQLite database".
        assert "free space" in said and "readable SQLite database" not in said, said

        fillers.append(fill(small_disk, "more"))  # what the failed backup freed
        failed = http.post(
            "/api/emergency/rollback",
            json={
                "backupId": backup_id,
                "confirm": True,
                "reason": "full",
                "components": ["budgets"],
            },
        )
        # Before: the audit trail's write failed on the same disk and the answer was a 500
        # ("the server failed with OperationalError") that hid both.
        assert failed.status_code == 503, failed.text
        detail = failed.json()["detail"]
        # Before: "rollback failed at step 'restore'; live state unchanged: rollback failed
        # at step 'restore': … the live data was left unchanged", both said twice.
        assert detail.startswith("rollback failed at step "), detail
        assert detail.count("at step") == 1 and detail.count("unchanged") == 1, detail
        assert "the live data was left unchanged" in detail, detail
        assert "disk space" in detail or "disk is full" in detail, detail
        assert "$300" in budgets(http)

        for filler in fillers:
            filler.unlink()
        rolled = http.post(
            "/api/emergency/rollback",
            json={
                "backupId": backup_id,
                "confirm": True,
                "reason": "room",
                "components": ["budgets"],
            },
        )
        assert rolled.status_code == 200, rolled.text
        assert "$100" in budgets(http)
