"""kill -9 of the service under load and in the middle of a backup, then a restart: nothing
acknowledged is lost, the stores pass their integrity checks, the repository passes
``restic check``, and the next backup succeeds."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from pathlib import Path

import httpx

from bench.loadgen import build_post, run_load
from tests.conftest import start_ers

BACKUP_ENV = {"ERS_BACKUPS_ENABLED": "true", "ERS_BACKUP_SCHEDULE_ENABLED": "false"}


def integrity(db: Path) -> str:
    return sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0]


def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    ers = start_ers(tmp_path)
    host = ers.url.removeprefix("http://")
    acknowledged: list[int] = []
    with httpx.Client(base_url=ers.url, timeout=10) as http:
        http.post(
            "/api/emergency/simulate-error",
            json={"component": "workout", "errorType": "agent", "count": 1},
        ).raise_for_status()
        http.post("/chat", json={"message": "make me a workout plan"})
        deadline = time.monotonic() + 10
        while not http.get("/api/emergency/incidents").json()["total"]:
            assert time.monotonic() < deadline, "the failure never became an incident"
            time.sleep(0.2)
        incident_id = http.get("/api/emergency/incidents").json()["incidents"][0]["id"]

    def request(n: int) -> bytes:
        return build_post(host, "/chat", {"message": f"spent $1 on coffee #{n}", "userId": "k"})

    def check(n: int, status: int, body: bytes) -> None:
        if status == 200 and json.loads(body)["success"]:
            acknowledged.append(n)

    async def load_then_kill() -> None:
        load = asyncio.ensure_future(
            run_load(
                ers.url,
                request,
                connections=16,
                total_requests=100_000,
                time_limit_s=5,
                check=check,
            )
        )
        await asyncio.sleep(1.5)
        ers.process.send_signal(signal.SIGKILL)
        await asyncio.gather(load, return_exceptions=True)

    asyncio.run(load_then_kill())
    ers.process.wait(timeout=10)
    assert acknowledged
    data = tmp_path / "data"
    for db in data.glob("*.sqlite3"):
        assert integrity(db) == "ok", db
    restarted = start_ers(tmp_path)
    try:
        conversations = sqlite3.connect(data / "conversations.sqlite3")
        stored = {row[0] for row in conversations.execute("SELECT message FROM turns")}
        assert all(f"spent $1 on coffee #{n}" in stored for n in acknowledged)
        budgets = sqlite3.connect(data / "budgets.sqlite3")
        expenses = budgets.execute("SELECT count(*) FROM expenses").fetchone()[0]
        assert expenses >= len(acknowledged)
        reply = httpx.post(f"{restarted.url}/chat", json={"message": "budget report"}, timeout=10)
        assert reply.status_code == 200
        # The incident history survived the kill.
        kept = httpx.get(f"{restarted.url}/api/emergency/incidents/{incident_id}", timeout=10)
        assert kept.status_code == 200 and kept.json()["timeline"]
    finally:
        assert restarted.stop() == 0


def test_kill_9_during_a_backup_then_restart_recovers_the_repository(tmp_path: Path) -> None:
    ers = start_ers(tmp_path, env=BACKUP_ENV)
    with httpx.Client(base_url=ers.url, timeout=60) as http:
        for i in range(50):
            http.post("/chat", json={"message": f"I spent ${i + 1} on food", "userId": "b"})
        ers.wait_for_backups()
        assert http.post("/api/emergency/backups/create", json={}).status_code == 200
        for i in range(50):
            http.post("/chat", json={"message": f"I spent ${i + 1} on rent", "userId": "b"})

        async def backup_then_kill() -> None:
            async with httpx.AsyncClient(base_url=ers.url, timeout=60) as client:
                pending = asyncio.ensure_future(
                    client.post("/api/emergency/backups/create", json={})
                )
                await asyncio.sleep(0.4)
                ers.process.send_signal(signal.SIGKILL)
                await asyncio.gather(pending, return_exceptions=True)

        asyncio.run(backup_then_kill())
    ers.process.wait(timeout=10)
    for db in (tmp_path / "data").glob("*.sqlite3"):
        assert integrity(db) == "ok", db

    restarted = start_ers(tmp_path, env=BACKUP_ENV)
    try:
        restarted.wait_for_backups()
        with httpx.Client(base_url=restarted.url, timeout=120) as http:
            after = http.post("/api/emergency/backups/create", json={})
            assert after.status_code == 200, after.text
            checked = http.post("/api/emergency/backups/check")
            assert checked.status_code == 200 and checked.json()["ok"] is True, checked.text
            rows = (
                sqlite3.connect(tmp_path / "data" / "budgets.sqlite3")
                .execute("SELECT count(*) FROM expenses")
                .fetchone()[0]
            )
            assert rows == 100
    finally:
        assert restarted.stop() == 0
