"""With real uvicorn and restic: a restore drill that finds the repository's data damaged
says what it found, in the health check's reason and in the log, not only that it failed."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx

from tests.conftest import ErsProcess, start_ers

INTERVAL_NAMES = ("SYSTEM_STATE", "CONVERSATIONS", "PROFILES", "BUDGETS", "FULL_SYSTEM")
DRILLS_OFTEN = {
    "ERS_BACKUPS_ENABLED": "true",
    "ERS_BACKUP_SCHEDULE_ENABLED": "true",
    "ERS_RESTORE_DRILL_INTERVAL_MINUTES": "0.05",
    "ERS_HEALTH_CHECK_INTERVAL_S": "0.5",
}


def damage_every_pack(repository: Path) -> None:
    """Zero bytes inside each data pack: restic's restore then fails its verification."""
    packs = [path for path in (repository / "data").rglob("*") if path.is_file()]
    assert packs
    for pack in packs:
        pack.chmod(0o644)
        with pack.open("r+b") as file:
            file.seek(min(100, pack.stat().st_size // 2))
            file.write(bytes(64))


def test_a_failed_restore_drill_names_what_it_found(tmp_path: Path) -> None:
    workdir = tmp_path / "ers"
    workdir.mkdir()
    (workdir / "restic-password").write_text("drill-password\n")
    ers = start_ers(workdir, env=DRILLS_OFTEN)
    try:
        ers.wait_for_backups()
        with httpx.Client(base_url=ers.url, timeout=60) as http:

            def drill() -> dict:
                return http.get("/api/emergency/health").json()["checks"]["restore_drill"]

            deadline = time.monotonic() + 60
            while drill()["reason"] != "last drill passed":
                assert time.monotonic() < deadline, drill()
                time.sleep(0.5)
            damage_every_pack(workdir / "repo")
            while (found := drill())["figures"]["passed"] is not False:
                assert time.monotonic() < deadline + 60, found
                time.sleep(0.5)

        assert found["status"] == "degraded"
        reason = found["reason"]
        assert reason.startswith("the last restore drill failed: snapshot "), reason
        assert "ciphertext verification failed" in reason
        # One failed restore of a snapshot of every component is said once.
        assert reason.count("restic exited") == 1, reason
        assert "conversations" in reason and "budgets" in reason
        assert "restore drill failed: snapshot " in ers.log()
    finally:
        ers.stop()


def test_a_failed_drill_runs_again_once_a_full_backup_follows_the_fix(tmp_path: Path) -> None:
    """Drills due every 6 hours: the one a start runs fails on a damaged repository; once the
    packs are whole again and a full backup follows (the runbook's fix), the next drill comes
    within a tick of the schedule, not 6 hours later."""
    workdir = tmp_path / "ers"
    workdir.mkdir()
    (workdir / "restic-password").write_text("drill-password\n")
    env = {**DRILLS_OFTEN, "ERS_RESTORE_DRILL_INTERVAL_MINUTES": "360"}
    ers = start_ers(workdir, env=env)
    try:
        ers.wait_for_backups()
        wait_for_drill(ers, "last drill passed")
    finally:
        assert ers.stop() == 0
    whole = tmp_path / "whole-packs"
    shutil.copytree(workdir / "repo" / "data", whole)
    damage_every_pack(workdir / "repo")

    ers = start_ers(workdir, env=env)
    try:
        ers.wait_for_backups()
        failed = wait_for_drill(ers, "the last restore drill failed")
        assert failed["status"] == "degraded", failed
        shutil.copytree(whole, workdir / "repo" / "data", dirs_exist_ok=True)
        created = httpx.post(
            f"{ers.url}/api/emergency/backups/create",
            json={"type": "full_system", "reason": "after-failed-drill"},
            timeout=120,
        )
        assert created.status_code == 200, created.text
        passed = wait_for_drill(ers, "last drill passed")
        assert passed["figures"]["lastDrillAt"] > failed["figures"]["lastDrillAt"], passed
    finally:
        assert ers.stop() == 0


def wait_for_drill(ers: ErsProcess, reason: str, limit_s: float = 90.0) -> dict:
    """The restore drill's health check once its reason starts with `reason` (bounded)."""
    deadline = time.monotonic() + limit_s
    while True:
        found = httpx.get(f"{ers.url}/api/emergency/health", timeout=60).json()
        check = found["checks"]["restore_drill"]
        if check["reason"].startswith(reason):
            return dict(check)
        assert time.monotonic() < deadline, check
        time.sleep(0.5)


def test_with_the_schedule_off_health_judges_what_an_operator_can_do(tmp_path: Path) -> None:
    """backup_schedule_enabled=false: health went degraded for good, judging backups and
    drills against the schedule that was off ("no restore drill within twice its schedule",
    with no way to run one in the service). A backup taken by hand still counts, and says so;
    no drill is due, and RestoreDrillOverdue has no interval to judge by."""
    workdir = tmp_path / "ers"
    workdir.mkdir()
    env = {
        **DRILLS_OFTEN,
        "ERS_BACKUP_SCHEDULE_ENABLED": "false",
        "ERS_RESTORE_DRILL_INTERVAL_MINUTES": "0.02",
        **{f"ERS_BACKUP_INTERVAL_MINUTES__{name}": "0.02" for name in INTERVAL_NAMES},
    }
    ers = start_ers(workdir, env=env)
    try:
        ers.wait_for_backups()
        with httpx.Client(base_url=ers.url, timeout=60) as http:
            time.sleep(3.5)  # over twice every interval (1.2 s) and the drill's
            checks = http.get("/api/emergency/health").json()["checks"]
            metrics = http.get("/metrics").text
            made = http.post("/api/emergency/backups/create", json={})
            assert made.status_code == 200, made.text
            after = http.get("/api/emergency/health").json()["checks"]["backups"]
    finally:
        assert ers.stop() == 0, ers.log()[-3000:]
    drill, stale = checks["restore_drill"], checks["backups"]
    assert drill["status"] == "healthy", drill
    assert "no drills are scheduled (backup_schedule_enabled=false)" in drill["reason"], drill
    assert "ers backup --offline drill" in drill["reason"]
    assert stale["status"] == "degraded", stale
    assert "the schedule is off (backup_schedule_enabled=false)" in stale["reason"], stale
    assert "ers backup create" in stale["reason"]
    assert "ers_restore_drill_interval_seconds" not in metrics
    assert "ers_backup_interval_seconds" in metrics
    assert after["status"] == "healthy", after
