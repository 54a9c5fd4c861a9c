"""A rollback of one component while people keep chatting, through a real `ers serve` and the
real restic: every write the service acknowledged is either in the live state afterwards or in
the safety snapshot the rollback printed, and no write to another component is lost."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import ErsProcess, start_ers
from tests.integration.test_cli import BACKUPS_ON, cli_env, ers

pytestmark = pytest.mark.integration

WRITERS = 4


def restore(work: Path, snapshot_id: str, target: Path) -> None:
    done = subprocess.run(
        ["restic", "restore", snapshot_id, "--target", str(target)],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")},
            "RESTIC_REPOSITORY": str(work / "repo"),
            "RESTIC_PASSWORD_FILE": str(work / "restic-password"),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def read(path: Path, query: str) -> set[tuple]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return set(db.execute(query))


class Chatter:
    """Writers that spend money until stopped; remembers what the service acknowledged."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.acknowledged: list[tuple[str, str]] = []
        self.threads = [threading.Thread(target=self._run, args=(w,)) for w in range(WRITERS)]

    def _run(self, writer: int) -> None:
        user = f"writer-{writer}"
        with httpx.Client(base_url=self.url, timeout=30) as http:
            for n in range(1, 100_000):
                if self.stop.is_set():
                    return
                message = f"spent ${n} on groceries"
                reply = http.post("/chat", json={"message": message, "userId": user})
                if reply.status_code == 200 and reply.json()["success"]:
                    self.acknowledged.append((user, message))

    def __enter__(self) -> Chatter:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


@pytest.fixture
def service(tmp_path: Path) -> ErsProcess:
    proc = start_ers(tmp_path, env=BACKUPS_ON)
    proc.wait_for_backups()
    yield proc
    proc.stop()


def test_no_acknowledged_write_is_lost_by_a_rollback_under_load(
    service: ErsProcess, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, service.url)
    created = ers(env, "backup", "create", "--reason", "before-load", "-o", "json")
    assert created.returncode == 0, created.stderr
    backup_id = json.loads(created.stdout)["backupId"]

    with Chatter(service.url) as chatter:
        rolled = ers(
            env, "backup", "rollback", backup_id, "--components", "budgets",
            "--reason", "under load", "--yes", "-o", "json",
        )  # fmt: skip
    assert rolled.returncode == 0, rolled.stderr
    safety_id = json.loads(rolled.stdout)["safetyBackupId"]
    assert len(chatter.acknowledged) > WRITERS  # writes were acknowledged during the rollback

    restore(tmp_path, safety_id, tmp_path / "safety")
    spent = "SELECT user_id, note FROM expenses"
    kept = read(tmp_path / "data" / "budgets.sqlite3", spent)
    in_safety = read(tmp_path / "safety" / "budgets.sqlite3", spent)
    lost = [w for w in chatter.acknowledged if w not in kept and w not in in_safety]
    assert lost == [], f"{len(lost)} of {len(chatter.acknowledged)} acknowledged writes lost"

    turns = read(tmp_path / "data" / "conversations.sqlite3", "SELECT user_id, message FROM turns")
    assert [w for w in chatter.acknowledged if w not in turns] == []
