"""Two real ERS replicas (uvicorn processes) on one PostgreSQL database and one restic
repository: after the repository is lost, `ers backup init` sent to one replica (as through
a load balancer) makes the new repository every replica's."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx

from tests.conftest import ErsProcess, backed_up_fleet


def backup_of_profiles(replica: ErsProcess) -> httpx.Response:
    body = {"type": "profiles", "reason": "after-init"}
    return httpx.post(f"{replica.url}/api/emergency/backups/create", json=body, timeout=120)


def test_an_init_on_one_replica_gives_every_replica_the_new_repository(
    tmp_path: Path, pg_url: str
) -> None:
    repository = tmp_path / "repo"
    with backed_up_fleet(tmp_path, pg_url) as replicas:
        first, second = replicas

        shutil.rmtree(repository)  # the repository is lost
        lost = backup_of_profiles(second)
        assert lost.status_code == 503 and "is gone" in lost.json()["detail"], lost.text
        init = httpx.post(f"{first.url}/api/emergency/backups/init", timeout=120)
        assert init.status_code == 200, init.text
        assert backup_of_profiles(first).status_code == 200

        # The other replica adopts it within its fleet poll: a bounded wait, no timing claim.
        deadline = time.monotonic() + 60
        while (reply := backup_of_profiles(second)).status_code != 200:
            assert "is gone" in reply.text or "not" in reply.text, reply.text
            assert time.monotonic() < deadline, (reply.text, second.log()[-3000:])
            time.sleep(0.5)
        assert "which replica" in second.log() and "made the fleet's" in second.log()
        health = httpx.get(f"{second.url}/api/emergency/health", timeout=30).json()
        assert health["checks"]["repository"]["status"] == "healthy", health["checks"]
    for replica in replicas:
        # The lost repository failed the emergency backup of its incident: named, no trace.
        assert "Traceback" not in replica.log(), replica.log()[-3000:]
