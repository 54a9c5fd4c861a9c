"""A rollback cut off by a ``kill -9`` is told by the replicas sharing the PostgreSQL trail:
by a replica of this host when the rollback ran on another (before, only a start on the
host that ran it looked, so one whose replica came back on another host, a container moved
or a new pod, stayed in the trail without an outcome for good), and by a replica that kept
running beside the one killed (before, only starts looked). Real ``ers serve`` processes,
real restic behind a wrapper whose ``restore`` or ``dump`` is slow, so that the kill lands
in the middle of the rollback; the first test's killed replica in a UTS namespace of its
own, with another host name."""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import start_ers
from tests.processes import slow_restic

pytestmark = pytest.mark.integration

ELSEWHERE = "ers-elsewhere"
# Runs its arguments in a UTS namespace of its own, whose host name is ELSEWHERE.
ON_ANOTHER_HOST = ("unshare", "--uts", "sh", "-c", f'hostname {ELSEWHERE} && exec "$@"', "sh")


def trail(client: httpx.Client, action: str) -> list[dict[str, Any]]:
    entries = client.get("/api/emergency/audit").json()["entries"]
    return [entry for entry in entries if entry["action"] == action]


def trail_once_written(client: httpx.Client, action: str, tries: int) -> list[dict[str, Any]]:
    """The entries ``action`` has once it has one, a tenth of a second between ``tries``."""
    for _ in range(tries):
        if written := trail(client, action):
            return written
        time.sleep(0.1)
    return []


def rollback_begun(
    there: httpx.Client, watch: httpx.Client, reason: str
) -> tuple[threading.Thread, dict[str, Any]]:
    """A backup of the budgets on ``there``, then their rollback in a thread of its own
    (whose request the kill ends unanswered), once ``watch`` sees its ``rollback_started``."""
    backup = there.post("/api/emergency/backups/create", json={"type": "budgets"})
    assert backup.status_code == 200, backup.text
    body = {
        "backupId": backup.json()["backupId"],
        "components": ["budgets"],
        "confirm": True,
        "reason": reason,
    }

    def roll_back() -> None:
        with contextlib.suppress(httpx.HTTPError):
            there.post("/api/emergency/rollback", json=body)

    rolling = threading.Thread(target=roll_back)
    rolling.start()
    (started,) = trail_once_written(watch, "rollback_started", 100)  # ten seconds at most
    return rolling, started


def test_a_rollback_cut_off_on_another_host_is_told_by_a_replica_of_this_one(
    tmp_path: Path, pg_url: str
) -> None:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is not installed")
    restic = shutil.which("restic")
    assert restic is not None, "restic is not installed"
    wrapper = slow_restic(tmp_path)
    shared = tmp_path / "elsewhere"
    env = {
        "ERS_DATABASE_URL": pg_url,
        "ERS_BACKUPS_ENABLED": "true",
        "ERS_BACKUP_SCHEDULE_ENABLED": "false",
        "ERS_AUTO_RESPONSE_ENABLED": "false",
        "ERS_RESTIC_BINARY": str(wrapper),
    }
    there = start_ers(shared, env=env, prefix=ON_ANOTHER_HOST)
    try:
        there.wait_for_backups()
        with httpx.Client(base_url=there.url, timeout=60) as client:
            rolling, started = rollback_begun(client, client, "cut off elsewhere")
            assert started["detail"]["host"] == ELSEWHERE, started
    finally:
        there.stop(signal.SIGKILL)
    rolling.join(timeout=60)

    here_env = {
        **env,
        "ERS_RESTIC_BINARY": restic,
        "ERS_RESTIC_REPOSITORY": str(shared / "repo"),
        "ERS_RESTIC_PASSWORD_FILE": str(shared / "restic-password"),
    }
    here = start_ers(tmp_path / "here", env=here_env)
    try:
        with httpx.Client(base_url=here.url, timeout=30) as client:
            # The killed replica's presence stamp is a few seconds old: this start sees it,
            # and a later look (every 5 s) records it once it has aged out of its window.
            told = trail_once_written(client, "rollback_interrupted", 300)  # thirty seconds
            assert len(told) == 1, told
            detail = told[0]["detail"]
            assert detail["run"] == started["detail"]["run"]
            assert detail["host"] == ELSEWHERE and detail["reason"] == "cut off elsewhere"
            assert f"started by admin on {ELSEWHERE}) has no outcome" in here.log()
    finally:
        assert here.stop() == 0


def test_a_replica_that_keeps_running_records_a_peers_rollback_cut_off_by_a_kill(
    tmp_path: Path, pg_url: str
) -> None:
    """Before: only a start looked (and once more 16 s after it), so replica b, running all
    along beside a whose rollback a ``kill -9`` cut off, never recorded it: the trail kept
    the rollback without an outcome until some replica started. Two real replicas on one
    database and repository, a's restic slow to dump the snapshot."""
    wrapper = slow_restic(tmp_path, command="dump")
    env = {
        "ERS_DATABASE_URL": pg_url,
        "ERS_BACKUPS_ENABLED": "true",
        "ERS_BACKUP_SCHEDULE_ENABLED": "false",
        "ERS_AUTO_RESPONSE_ENABLED": "false",
        "ERS_RESTIC_REPOSITORY": str(tmp_path / "repo"),
        "ERS_RESTIC_PASSWORD_FILE": str(tmp_path / "restic-password"),
    }
    b = start_ers(tmp_path / "b", env=env)
    a = start_ers(tmp_path / "a", env={**env, "ERS_RESTIC_BINARY": str(wrapper)})
    rolling: threading.Thread | None = None
    try:
        b.wait_for_backups()
        a.wait_for_backups()
        here = httpx.Client(base_url=b.url, timeout=30)
        # Past b's start and its second look (16 s after it): what follows is b running on.
        while here.get("/api/emergency/status").json()["health"]["uptimeSeconds"] < 17:
            time.sleep(0.5)
        there = httpx.Client(base_url=a.url, timeout=60)
        rolling, started = rollback_begun(there, here, "cut off beside b")
        a.stop(signal.SIGKILL)
        # On one host a's pid tells at once; of another host, 15 s after its last stamp.
        told = trail_once_written(here, "rollback_interrupted", 400)  # forty seconds at most
        assert len(told) == 1, told
        assert told[0]["detail"]["run"] == started["detail"]["run"]
        assert "(started by admin on" in b.log() and "has no outcome" in b.log()
        here.close()
        there.close()
    finally:
        a.stop(signal.SIGKILL)
        if rolling is not None:
            rolling.join(timeout=60)
        assert b.stop() == 0
