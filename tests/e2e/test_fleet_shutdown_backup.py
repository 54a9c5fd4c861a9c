"""Two real ERS replicas (uvicorn processes) on one PostgreSQL database and one restic
repository, stopped one after the other: only the replica running the fleet jobs takes the
final backup, and the other says in its log why it takes none."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.conftest import ErsProcess, backed_up_fleet, tagged_snapshots

RUNS_THE_JOBS = "now runs the fleet jobs"
NO_FINAL_BACKUP = "no final backup from this replica"


def shutdown_snapshots(repository: Path, password_file: Path) -> list[dict[str, Any]]:
    return tagged_snapshots(repository, password_file, "reason:shutdown")


def the_jobs_runner(replicas: list[ErsProcess]) -> ErsProcess:
    """The replica whose log says it took the fleet jobs (bounded wait)."""
    deadline = time.monotonic() + 60
    while True:
        running = [r for r in replicas if RUNS_THE_JOBS in r.log()]
        if running:
            return running[0]
        assert time.monotonic() < deadline, "\n".join(r.log()[-2000:] for r in replicas)
        time.sleep(0.2)


def test_only_the_replica_running_the_fleet_jobs_takes_the_final_backup(
    tmp_path: Path, pg_url: str
) -> None:
    repository, password_file = tmp_path / "repo", tmp_path / "restic-password"
    with backed_up_fleet(tmp_path, pg_url, schedule=True) as replicas:
        runner = the_jobs_runner(replicas)
        other = next(r for r in replicas if r is not runner)

        assert other.stop() == 0
        assert NO_FINAL_BACKUP in other.log(), other.log()[-3000:]
        assert shutdown_snapshots(repository, password_file) == []

        assert runner.stop() == 0
        assert NO_FINAL_BACKUP not in runner.log()
        snapshots = shutdown_snapshots(repository, password_file)
        components = sorted(t for s in snapshots for t in s["tags"] if t.startswith("component:"))
        assert components == [
            "component:budgets",
            "component:conversations",
            "component:incidents",
            "component:profiles",
            "component:system_state",
        ], snapshots
    for replica in replicas:
        assert "Traceback" not in replica.log(), replica.log()[-3000:]
