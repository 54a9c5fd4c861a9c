"""Two real ERS replicas (uvicorn processes) on one PostgreSQL database and one restic
repository: a rollback of budgets on one replica drops the cached answers of the other too,
so its budget agent, failing, does not answer with figures the rollback put aside; so does
one whose replica a ``kill -9`` cut off after its swap."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from tests.conftest import ErsProcess, backed_up_fleet
from tests.processes import rollback_until_recording, slow_restic

USER = "fleet-ann"


def budget_report(http: httpx.Client) -> str:
    reply = http.post("/chat", json={"message": "budget report", "userId": USER})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["response"])


def cache_then_back_up(on_a: httpx.Client, on_b: httpx.Client) -> str:
    """A snapshot of budgets taken on a, then an expense b answers of and caches."""
    chat = {"message": "set my food budget to $400", "userId": USER}
    assert on_b.post("/chat", json=chat).status_code == 200
    taken = on_a.post("/api/emergency/backups/create", json={"type": "budgets"})
    assert taken.status_code == 200, taken.text
    spent = {"message": "spent $55 on groceries", "userId": USER}
    assert on_b.post("/chat", json=spent).status_code == 200
    assert "$55.00" in budget_report(on_b)  # b's last good answer, now cached
    return str(taken.json()["backupId"])


def answers_without_the_expense(on_b: httpx.Client, b: ErsProcess, within_s: float) -> None:
    """b's budget agent, failing, no longer answers with the expense rolled back."""
    fault = {"errorType": "database", "component": "budget", "count": 50}
    assert on_b.post("/api/emergency/simulate-error", json=fault).status_code == 200
    deadline = time.monotonic() + within_s
    while "$55.00" in (answer := budget_report(on_b)):
        assert time.monotonic() < deadline, b.log()[-3000:]
        time.sleep(0.5)
    assert "$55.00" not in answer


def test_a_rollback_on_one_replica_drops_the_cached_answers_of_the_other(
    tmp_path: Path, pg_url: str
) -> None:
    with backed_up_fleet(tmp_path, pg_url) as (a, b):
        on_a = httpx.Client(base_url=a.url, timeout=120)
        on_b = httpx.Client(base_url=b.url, timeout=60)
        with on_a, on_b:
            snapshot = cache_then_back_up(on_a, on_b)
            rollback = {"backupId": snapshot, "confirm": True, "reason": "x"}
            rolled = on_a.post("/api/emergency/rollback", json=rollback)
            assert rolled.status_code == 200, rolled.text
            answers_without_the_expense(on_b, b, 30)  # b follows the fleet every 2 s
            assert "cached answers given before a rollback there dropped: " in b.log()
    for replica in (a, b):
        assert "Traceback" not in replica.log(), replica.log()[-3000:]


def test_a_rollback_cut_off_after_its_swap_drops_the_cached_answers_all_the_same(
    tmp_path: Path, pg_url: str
) -> None:
    """Before: the replica killed between the swap and what follows it never moved the
    fleet's token, and b served the expense rolled back until a rollback of its own. What
    follows the swap now runs beside the rollback's record, which a is killed in: b drops
    its answers by the token a moved, and runs what follows once more as it records the
    rollback cut off (the answers then gone already)."""
    marker = tmp_path / "writing-the-record"
    restic = slow_restic(tmp_path, "rollback.json", 120, marker)
    with backed_up_fleet(tmp_path, pg_url, env={"ERS_RESTIC_BINARY": str(restic)}) as (a, b):
        on_a = httpx.Client(base_url=a.url, timeout=120)
        on_b = httpx.Client(base_url=b.url, timeout=60)
        with on_a, on_b:
            snapshot = cache_then_back_up(on_a, on_b)
            rollback = {"backupId": snapshot, "confirm": True, "reason": "x"}
            rollback_until_recording(a.url, rollback, marker, a.log()[-3000:])
            a.stop(signal.SIGKILL)  # the swap has committed
            # b records the rollback cut off once a is no longer seen (15 s), and drops.
            answers_without_the_expense(on_b, b, 60)
            said = "what follows the swap of budgets a rollback cut off: done"
            for _ in range(600):
                if said in b.log():
                    break
                time.sleep(0.1)
            assert said in b.log(), b.log()
    assert "Traceback" not in b.log(), b.log()[-3000:]
