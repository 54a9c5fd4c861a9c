"""Two real ERS replicas (uvicorn processes) on one PostgreSQL database and one restic
repository: a rollback of budgets on one replica drops the cached answers of the other too,
so its budget agent, failing, does not answer with figures the rollback put aside."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.conftest import backed_up_fleet

USER = "fleet-ann"


def budget_report(http: httpx.Client) -> str:
    reply = http.post("/chat", json={"message": "budget report", "userId": USER})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["response"])


def test_a_rollback_on_one_replica_drops_the_cached_answers_of_the_other(
    tmp_path: Path, pg_url: str
) -> None:
    with backed_up_fleet(tmp_path, pg_url) as (a, b):
        on_a = httpx.Client(base_url=a.url, timeout=120)
        on_b = httpx.Client(base_url=b.url, timeout=60)
        with on_a, on_b:
            chat = {"message": "set my food budget to $400", "userId": USER}
            assert on_b.post("/chat", json=chat).status_code == 200
            taken = on_a.post("/api/emergency/backups/create", json={"type": "budgets"})
            assert taken.status_code == 200, taken.text
            spent = {"message": "spent $55 on groceries", "userId": USER}
            assert on_b.post("/chat", json=spent).status_code == 200
            assert "$55.00" in budget_report(on_b)  # b's last good answer, now cached

            rollback = {"backupId": taken.json()["backupId"], "confirm": True, "reason": "x"}
            rolled = on_a.post("/api/emergency/rollback", json=rollback)
            assert rolled.status_code == 200, rolled.text

            fault = {"errorType": "database", "component": "budget", "count": 50}
            assert on_b.post("/api/emergency/simulate-error", json=fault).status_code == 200
            deadline = time.monotonic() + 30  # b follows the fleet's switches every 2 s
            while "$55.00" in (answer := budget_report(on_b)):
                assert time.monotonic() < deadline, b.log()[-3000:]
                time.sleep(0.5)
            assert "$55.00" not in answer
            assert "cached answers given before a rollback there dropped: " in b.log()
    for replica in (a, b):
        assert "Traceback" not in replica.log(), replica.log()[-3000:]
