"""Two real ERS replicas (uvicorn processes) on one PostgreSQL database and one restic
repository: a prune asked of one replica while the other's backup holds the repository waits
for that backup, as within one replica, instead of failing on the other's restic lock."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg

from tests.conftest import backed_up_fleet

WAITING = "SELECT count(*) FROM pg_locks WHERE locktype = %s AND NOT granted"


def waiting_locks(url: str, locktype: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(WAITING, (locktype,)).fetchone()
    return int(row[0]) if row else 0


def test_a_prune_on_one_replica_waits_for_the_other_replicas_backup(
    tmp_path: Path, pg_url: str
) -> None:
    repository = tmp_path / "repo"
    with backed_up_fleet(tmp_path, pg_url) as replicas:
        first, second = replicas
        with psycopg.connect(pg_url) as holder, ThreadPoolExecutor(2) as pool:
            # The second replica's backup starts restic, whose pg_dump waits for this lock.
            holder.execute("LOCK TABLE ers_budgets.expenses IN ACCESS EXCLUSIVE MODE")
            backup = pool.submit(
                httpx.post,
                f"{second.url}/api/emergency/backups/create",
                json={"type": "budgets", "reason": "beside-prune"},
                timeout=120,
            )
            for _ in range(600):
                holding = any((repository / "locks").iterdir())
                if (holding and waiting_locks(pg_url, "relation")) or backup.done():
                    break
                time.sleep(0.05)
            assert not backup.done(), backup.result().text

            prune = pool.submit(httpx.post, f"{first.url}/api/emergency/backups/prune", timeout=120)
            for _ in range(600):  # until the prune waits for its turn, or has answered
                if prune.done() or waiting_locks(pg_url, "advisory"):
                    break
                time.sleep(0.05)
            holder.rollback()  # the backup goes on, then the prune
            pruned, backed_up = prune.result(), backup.result()

        assert backed_up.status_code == 200, backed_up.text
        assert pruned.status_code == 200, pruned.text
    for replica in replicas:
        assert "Traceback" not in replica.log(), replica.log()[-3000:]
