"""With real uvicorn and restic: the scheduled `restic check` that finds the repository
damaged says so, in the repository health check and the log, and a prune that fails on the
same damage does not keep it from running."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.conftest import start_ers
from tests.integration.test_restore_drill_health import damage_every_pack

CHECKS_OFTEN = {
    "ERS_BACKUPS_ENABLED": "true",
    "ERS_BACKUP_SCHEDULE_ENABLED": "true",
    "ERS_PRUNE_INTERVAL_HOURS": "0.005",
    "ERS_REPOSITORY_CHECK_INTERVAL_HOURS": "0.005",
    "ERS_HEALTH_CHECK_INTERVAL_S": "0.5",
}


def test_a_scheduled_check_that_finds_damage_turns_the_repository_check_unhealthy(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "ers"
    workdir.mkdir()
    (workdir / "restic-password").write_text("check-password\n")
    ers = start_ers(workdir, env=CHECKS_OFTEN)
    try:
        ers.wait_for_backups()
        deadline = time.monotonic() + 150  # two ticks of the schedule, and restic's time
        with httpx.Client(base_url=ers.url, timeout=60) as http:
            while not http.get("/api/emergency/backups").json()["backups"]:
                assert time.monotonic() < deadline, ers.log()[-3000:]
                time.sleep(0.5)  # the first scheduled backup
            damage_every_pack(workdir / "repo")
            while True:
                found = http.get("/api/emergency/health").json()["checks"]["repository"]
                if found["status"] != "healthy":
                    break
                assert time.monotonic() < deadline, (found, ers.log()[-3000:])
                time.sleep(1)
        assert found["status"] == "unhealthy", found
        assert found["reason"].startswith("the last repository check found problems: "), found
        assert "the repository check found problems" in ers.log()
    finally:
        ers.stop()
