"""Two real ERS replicas (uvicorn processes) on one PostgreSQL database, one restic
repository and one off-host repository: the replica that takes the fleet jobs lock copies at
once, not a copy interval later, and so does the one that takes the lock over after a
`kill -9` of the first; only the copying replica reports a successful copy, and no snapshot
is copied twice."""

from __future__ import annotations

import collections
import json
import signal
import time
from pathlib import Path

import httpx

from tests.conftest import ErsProcess, backed_up_fleet, run_restic
from tests.e2e.test_fleet_shutdown_backup import the_jobs_runner

COPIED = "off-host copy to"
LAST_SUCCESS = "ers_backup_offsite_last_success_timestamp_seconds"
# Far longer than any wait here: a copy seen comes from taking the lock, not the interval.
INTERVAL_MINUTES = 600


def copied(replica: ErsProcess) -> None:
    """Until the replica's log says it copied (bounded wait)."""
    deadline = time.monotonic() + 120
    while COPIED not in replica.log():
        assert time.monotonic() < deadline, replica.log()[-3000:]
        time.sleep(0.2)


def reports_a_copy(replica: ErsProcess) -> bool:
    metrics = httpx.get(f"{replica.url}/metrics", timeout=10).text
    return any(line.startswith(LAST_SUCCESS) for line in metrics.splitlines())


def test_the_jobs_lock_holder_copies_off_host_at_once_and_so_does_the_one_taking_over(
    tmp_path: Path, pg_url: str
) -> None:
    offsite, offsite_password = tmp_path / "offsite", tmp_path / "offsite-password"
    offsite_password.write_text("offsite-password-7d1e\n")
    env = {
        "ERS_OFFSITE_REPOSITORY": str(offsite),
        "ERS_OFFSITE_PASSWORD_FILE": str(offsite_password),
        "ERS_OFFSITE_COPY_INTERVAL_MINUTES": str(INTERVAL_MINUTES),
    }
    with backed_up_fleet(tmp_path, pg_url, schedule=True, env=env) as replicas:
        runner = the_jobs_runner(replicas)
        other = next(r for r in replicas if r is not runner)
        copied(runner)
        assert reports_a_copy(runner)
        assert COPIED not in other.log()
        assert not reports_a_copy(other)  # it copied nothing: neither fresh nor stale

        assert runner.stop(signal.SIGKILL) == -signal.SIGKILL
        assert the_jobs_runner([other]) is other
        copied(other)
        assert reports_a_copy(other)

    done = run_restic(offsite, offsite_password, "snapshots", "--json", "--no-lock")
    assert done.returncode == 0, done.stderr
    snapshots = json.loads(done.stdout or "[]") or []
    originals = collections.Counter(s["original"] for s in snapshots)
    assert originals and max(originals.values()) == 1, originals
    for replica in replicas:
        assert "Traceback" not in replica.log(), replica.log()[-3000:]
