"""Alertmanager's deliveries to two real ERS replicas (uvicorn processes) on one PostgreSQL
database: a firing taken by one replica and its resolution by the other."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.conftest import ErsProcess, start_ers

STARTS_AT = "2026-12-03T12:00:00.000Z"


def payload(status: str, fingerprint: str) -> dict[str, Any]:
    labels = {
        "alertname": "AgentErrorRatioHigh",
        "severity": "critical",
        "action": "isolate",
        "agent": "budget",
    }
    alert = {
        "status": status,
        "labels": labels,
        "annotations": {"summary": "budget fails"},
        "startsAt": STARTS_AT,
        "endsAt": "2026-12-03T12:10:00.000Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "fingerprint": fingerprint,
    }
    return {
        "version": "4",
        "groupKey": '{}:{alertname="AgentErrorRatioHigh"}',
        "status": status,
        "receiver": "ers-isolate",
        "alerts": [alert],
    }


def post(replica: ErsProcess, body: dict[str, Any]) -> None:
    reply = httpx.post(f"{replica.url}/api/emergency/alerts", json=body, timeout=10)
    assert reply.status_code == 200 and reply.json()["new"] == 1, reply.text


def outcome(pg_url: str, fingerprint: str, status: str) -> str | None:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT outcome FROM ers_incidents.alert_ledger WHERE fingerprint = %s AND status = %s",
            (fingerprint, status),
        ).fetchone()
    return row[0] if row else None


def until(condition: Any, what: str, replicas: list[ErsProcess]) -> Any:
    deadline = time.monotonic() + 60
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}; logs:\n" + "\n".join(
            r.log()[-3000:] for r in replicas
        )
        time.sleep(0.1)
    return value


def test_a_resolution_on_one_replica_undoes_the_isolation_its_firing_makes_on_another(
    tmp_path: Path, pg_url: str
) -> None:
    """The firing reaches replica a, whose incident store is held up a moment (a slow
    database); its resolution reaches replica b meanwhile. b waits for a's firing to be
    acted on, then releases the isolation it made, instead of finding no incident yet and
    leaving the agent forced open for the isolation's whole time."""
    env = {"ERS_DATABASE_URL": pg_url}
    replicas = [start_ers(tmp_path / "a", env=env), start_ers(tmp_path / "b", env=env)]
    a, b = replicas
    try:
        with psycopg.connect(pg_url) as holder:
            holder.execute("LOCK TABLE ers_incidents.incidents IN ACCESS EXCLUSIVE MODE")
            post(a, payload("firing", "race01"))

            def a_waits_on_the_incidents() -> bool:
                with psycopg.connect(pg_url) as conn:
                    return bool(
                        conn.execute(
                            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                            " AND query LIKE '%FROM incidents WHERE component%'"
                        ).fetchone()
                    )

            until(a_waits_on_the_incidents, "a's firing never reached the incident store", replicas)
            post(b, payload("resolved", "race01"))
            until(
                lambda: (
                    "resolved while its firing is acted on" in b.log()
                    or outcome(pg_url, "race01", "resolved")
                ),
                "b neither finished nor waited for the firing",
                replicas,
            )
            holder.rollback()  # the database answers again

        fired = until(lambda: outcome(pg_url, "race01", "firing"), "firing not done", replicas)
        assert fired.startswith("isolate: success"), fired
        resolved = until(lambda: outcome(pg_url, "race01", "resolved"), "not resolved", replicas)
        assert "released" in resolved, resolved

        def released_everywhere() -> bool:
            breakers = [
                httpx.get(f"{r.url}/api/emergency/circuit-breakers/budget").json() for r in replicas
            ]
            return all(not breaker["forced"] for breaker in breakers)

        until(released_everywhere, "the alert's isolation is still in force", replicas)
    finally:
        for replica in replicas:
            replica.stop()


def test_a_firing_whose_replica_was_killed_mid_action_is_taken_by_the_next_delivery(
    tmp_path: Path, pg_url: str
) -> None:
    """Replica a takes a firing and is killed before it has acted (its incident store held
    up); the firing comes again (the other Alertmanager of a pair), to replica b. Before, b
    counted it a duplicate of a's attempt, under way for the ledger for 5 minutes, and the
    agent was isolated only at the alert's next repeat, an hour later."""
    env = {"ERS_DATABASE_URL": pg_url}
    replicas = [start_ers(tmp_path / "a", env=env), start_ers(tmp_path / "b", env=env)]
    a, b = replicas
    try:
        with psycopg.connect(pg_url) as holder:
            holder.execute("LOCK TABLE ers_incidents.incidents IN ACCESS EXCLUSIVE MODE")
            post(a, payload("firing", "killed01"))
            until(
                lambda: "killed01" in str(ledger_row(pg_url, "killed01")), "no ledger row", replicas
            )
            assert a.stop(signal.SIGKILL) == -signal.SIGKILL
            holder.rollback()
        # The same firing again, to the replica left: it takes the attempt a lost.
        post(b, payload("firing", "killed01"))
        fired = until(lambda: outcome(pg_url, "killed01", "firing"), "firing not done", replicas)
        assert fired.startswith("isolate: success"), fired
        breaker = httpx.get(f"{b.url}/api/emergency/circuit-breakers/budget", timeout=10).json()
        assert breaker["forced"], breaker
    finally:
        for replica in replicas:
            replica.stop()


def ledger_row(pg_url: str, fingerprint: str) -> tuple[Any, ...] | None:
    with psycopg.connect(pg_url) as conn:
        return conn.execute(
            "SELECT fingerprint, taker, outcome FROM ers_incidents.alert_ledger"
            " WHERE fingerprint = %s",
            (fingerprint,),
        ).fetchone()
