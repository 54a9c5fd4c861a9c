"""Backups write nothing outside the data directory. In the image the data directory is a
volume (``/data``) owned by the service's user and the folder above it (``/``) is not; the
backups' work folder beside the data directory could not be made there, and the service
took no backup at all while its repository check said "connecting" for ever. Here the
folder above the data directory is made immutable, which stops root too. Real ``ers serve``
over HTTP and real restic; skipped where the filesystem cannot make a folder immutable."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import run_restic, start_ers

pytestmark = pytest.mark.integration


@pytest.fixture
def sealed_parent(tmp_path: Path) -> Iterator[Path]:
    """A data directory whose parent takes no new entry, from anyone."""
    parent = tmp_path / "volume-parent"
    (parent / "data").mkdir(parents=True)
    done = subprocess.run(["chattr", "+i", str(parent)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this filesystem cannot make a folder immutable: {done.stderr.strip()}")
    try:
        yield parent / "data"
    finally:
        subprocess.run(["chattr", "-i", str(parent)], check=True)


def test_backups_work_when_only_the_data_directory_is_writable(
    tmp_path: Path, sealed_parent: Path
) -> None:
    workdir = tmp_path / "ers"
    env = {
        "ERS_DATA_DIR": str(sealed_parent),
        "ERS_BACKUPS_ENABLED": "true",
        "ERS_BACKUP_SCHEDULE_ENABLED": "false",
    }
    ers = start_ers(workdir, env)
    try:
        ers.wait_for_backups(timeout=60)
        with httpx.Client(base_url=ers.url, timeout=60) as http:
            assert http.post("/chat", json={"message": "budget report"}).status_code == 200
            made = http.post("/api/emergency/backups/create", json={"reason": "manual"})
            assert made.status_code == 200, made.text
            snapshot = made.json()["backupId"]
            health = http.get("/api/emergency/health").json()
            assert health["checks"]["repository"]["status"] == "healthy", health
    finally:
        assert ers.stop() == 0
    listed = run_restic(workdir / "repo", workdir / "restic-password", "snapshots", "--json")
    assert listed.returncode == 0, listed.stderr
    assert snapshot in listed.stdout
    assert (sealed_parent / ".backup-work").is_dir()
    assert sorted(p.name for p in sealed_parent.parent.iterdir()) == ["data"]


def test_a_work_folder_that_cannot_be_made_is_reported_and_retried(tmp_path: Path) -> None:
    """A file where the work folder goes: the repository check names the cause, backups
    answer 503 with it, and once the file is gone the service reaches the repository by
    itself. The error used to end the connection task without a word, the check saying
    "connecting to the repository" until a restart."""
    workdir = tmp_path / "ers"
    blocker = workdir / "data" / ".backup-work"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    env = {"ERS_BACKUPS_ENABLED": "true", "ERS_BACKUP_SCHEDULE_ENABLED": "false"}
    ers = start_ers(workdir, env)
    try:
        with httpx.Client(base_url=ers.url, timeout=60) as http:
            for _ in range(100):  # bounded: the first attempt ends within moments
                check = http.get("/api/emergency/health").json()["checks"]["repository"]
                if check["status"] != "degraded":
                    break
                time.sleep(0.1)
            assert check["status"] == "unhealthy", check
            assert "the backups' own files cannot be written" in check["reason"], check
            assert ".backup-work" in check["reason"], check
            refused = http.post("/api/emergency/backups/create", json={"reason": "manual"})
            assert refused.status_code == 503, refused.text
            assert "the backups' own files cannot be written" in refused.text
            blocker.unlink()
            ers.wait_for_backups(timeout=90)  # retried with backoff, no restart
            made = http.post("/api/emergency/backups/create", json={"reason": "manual"})
            assert made.status_code == 200, made.text
        assert "backups unavailable (the backups' own files cannot be written" in ers.log()
    finally:
        assert ers.stop() == 0
