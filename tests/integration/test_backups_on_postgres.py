"""Backups of the state on PostgreSQL through the running service: a real ERS (uvicorn) on a
real PostgreSQL server, pg_dump piped into the real restic, then a test rollback and a
rollback of one component through the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import start_ers

pytestmark = pytest.mark.integration

USER = "pg-backup-user"


def chat(client: httpx.Client, message: str, key: str | None = None) -> str:
    headers = {"Idempotency-Key": key} if key else {}
    reply = client.post("/chat", json={"message": message, "userId": USER}, headers=headers)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["success"] is True, body
    return str(body["response"])


def expenses(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ers_budgets.expenses WHERE user_id = %s", (USER,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def budget_incident(client: httpx.Client) -> str:
    """A failing budget call, and the id of the incident it opens (bounded wait)."""
    fault = {"component": "budget", "errorType": "database"}
    assert client.post("/api/emergency/simulate-error", json=fault).status_code == 200
    reply = client.post("/chat", json={"message": "budget report", "userId": "someone-else"})
    assert reply.status_code == 200 and reply.json()["success"] is False, reply.text
    assert client.delete("/api/emergency/simulate-error").status_code == 200
    for _ in range(100):
        found = client.get("/api/emergency/incidents", params={"component": "budget"}).json()
        if found["incidents"]:
            return str(found["incidents"][0]["id"])
        time.sleep(0.05)
    raise AssertionError("the failing budget call opened no incident")


def offline_settings(work: Path, pg_url: str) -> dict[str, str]:
    """The settings ``start_ers`` gave the service in ``work``, for an offline command."""
    return {
        "ERS_ENV": "test",
        "ERS_DATABASE_URL": pg_url,
        "ERS_DATA_DIR": str(work / "data"),
        "ERS_RESTIC_REPOSITORY": str(work / "repo"),
        "ERS_RESTIC_PASSWORD_FILE": str(work / "restic-password"),
    }


def post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = client.post(path, json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def test_a_budgets_backup_is_previewed_and_rolled_back_without_touching_the_rest(
    tmp_path: Path, pg_url: str
) -> None:
    env = {
        "ERS_DATABASE_URL": pg_url,
        "ERS_BACKUPS_ENABLED": "true",
        "ERS_BACKUP_SCHEDULE_ENABLED": "false",
        # The incident below must not isolate the budget agent: its report is read after.
        "ERS_AUTO_RESPONSE_ENABLED": "false",
    }
    ers = start_ers(tmp_path / "ers", env=env)
    try:
        ers.wait_for_backups()
        with httpx.Client(base_url=ers.url, timeout=30) as client:
            chat(client, "set my food budget to $400")
            chat(client, "spent $25 on groceries")
            backup = post(client, "/api/emergency/backups/create", {"type": "budgets"})
            assert backup["components"] == ["budgets"]
            chat(client, "spent $10 on groceries")
            chat(client, "spent $12 on groceries", key="twelve")
            assert expenses(pg_url) == 3

            listed = client.get("/api/emergency/backups").json()
            assert [b["components"] for b in listed["backups"]] == [["budgets"]]
            # The schemas' size on the server, not the "0 B" of a backend that had none.
            number, unit = listed["totalSize"].split()
            assert unit in ("KB", "MB", "GB") and float(number) > 0, listed
            assert client.get("/api/emergency/status").json()["backups"]["totalSize"]

            shown = subprocess.run(
                [str(Path(sys.executable).with_name("ers")), "backup", "test-rollback"]
                + [backup["backupId"], "--url", ers.url],
                env={k: v for k, v in os.environ.items() if not k.startswith("ERS_")},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert shown.returncode == 0, shown.stderr
            assert "expenses" in shown.stdout and "write_probe" not in shown.stdout
            # Offline beside the service, on the same settings: the same table (before: the
            # offline command looked for SQLite files and found no component in the snapshot).
            work = tmp_path / "ers"
            offline = subprocess.run(
                [str(Path(sys.executable).with_name("ers")), "backup", "--offline"]
                + ["test-rollback", backup["backupId"]],
                env={
                    **{k: v for k, v in os.environ.items() if not k.startswith("ERS_")},
                    **offline_settings(work, pg_url),
                },
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert offline.returncode == 0, offline.stderr
            assert offline.stdout == shown.stdout

            preview = post(
                client, "/api/emergency/backups/test-rollback", {"backupId": backup["backupId"]}
            )
            budgets = preview["components"]["budgets"]
            assert budgets["verification"]["integrity"] == "ok"
            assert budgets["tables"]["expenses"] == {
                "rowsNow": 3,
                "rowsInSnapshot": 1,
                "added": 0,
                "removed": 2,  # the two expenses recorded since, by key
                "changed": 0,
            }
            assert expenses(pg_url) == 3  # a test rollback touches nothing live

            # A snapshot holds one component: asking it for another is refused, clearly.
            refused = client.post(
                "/api/emergency/rollback",
                json={
                    "backupId": backup["backupId"],
                    "components": ["profiles"],
                    "confirm": True,
                    "reason": "wrong component",
                },
            )
            assert refused.status_code in (400, 409), refused.text
            assert "budgets only" in refused.text

            incident_id = budget_incident(client)
            # Before an incident: a snapshot holds one component, so one must be named.
            unnamed = client.post(
                "/api/emergency/rollback",
                json={"beforeIncident": incident_id, "confirm": True, "reason": "r"},
            )
            assert unnamed.status_code == 400, unnamed.text
            assert "name one component" in unnamed.text
            # Its test says the same (before: a 404, "no snapshot ... name fewer components").
            body = {"beforeIncident": incident_id}
            tested = client.post("/api/emergency/backups/test-rollback", json=body)
            assert (tested.status_code, tested.json()) == (400, unnamed.json()), tested.text
            result = post(
                client,
                "/api/emergency/rollback",
                {
                    "beforeIncident": incident_id,
                    "components": ["budgets"],
                    "confirm": True,
                    "reason": "bad expenses",
                },
            )
            assert result["backupId"] == backup["backupId"]
            assert result["components"] == ["budgets"]
            assert result["safetyBackupId"]
            assert expenses(pg_url) == 1
            assert "$25" in chat(client, "budget report")
            # Its reply told of an expense put aside: a retry records it again.
            assert "wrote to budgets forgotten: 1" in " ".join(result["restored"]), result
            assert "Recorded $12.00" in chat(client, "spent $12 on groceries", key="twelve")
            assert expenses(pg_url) == 2
            # The conversation kept every turn, including those after the snapshot.
            with psycopg.connect(pg_url) as conn:
                turns = conn.execute(
                    "SELECT count(*) FROM ers_conversations.turns WHERE user_id = %s", (USER,)
                ).fetchone()
            assert turns == (6,)
    finally:
        assert ers.stop() == 0, ers.log()
    assert "Traceback" not in ers.log(), ers.log()[-3000:]

    # Undone offline, with no replica running: in the fleet's audit trail as the service's
    # rollbacks are, each after its start (before: not in it at all).
    undone = subprocess.run(
        [str(Path(sys.executable).with_name("ers")), "backup", "--offline", "rollback"]
        + [result["safetyBackupId"], "--reason", "undo", "--yes", "--json"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("ERS_")},
            **offline_settings(work, pg_url),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert undone.returncode == 0, undone.stderr
    assert expenses(pg_url) == 3
    # Offline too: the retry's reply told of an expense the undo put aside.
    restored = " ".join(json.loads(undone.stdout)["restored"])
    assert "wrote to budgets forgotten: 1" in restored, undone.stdout
    with psycopg.connect(pg_url) as conn:
        trail = conn.execute(
            "SELECT actor, action, detail FROM ers_incidents.audit ORDER BY id"
        ).fetchall()
    assert [(actor, action) for actor, action, _ in trail] == [
        ("admin", "rollback_started"),
        ("admin", "rollback"),  # refused: the snapshot holds budgets only
        ("admin", "rollback_started"),
        ("admin", "rollback_swapped"),
        ("admin", "rollback"),
        ("offline", "rollback_started"),
        ("offline", "rollback_swapped"),
        ("offline", "rollback"),
    ], trail
    detail = trail[-1][2] if isinstance(trail[-1][2], dict) else json.loads(trail[-1][2])
    assert detail["safetyBackupId"] and detail["error"] is None, detail


def test_replicas_started_together_share_one_new_repository(tmp_path: Path, pg_url: str) -> None:
    """Two replicas on one PostgreSQL and one data directory, started at once: one creates
    the repository, the other waits for it and adopts it; neither takes it for a lost one
    (a critical incident)."""
    from concurrent.futures import ThreadPoolExecutor

    workdir = tmp_path / "shared"
    env = {
        "ERS_DATABASE_URL": pg_url,
        "ERS_BACKUPS_ENABLED": "true",
        "ERS_BACKUP_SCHEDULE_ENABLED": "false",
    }
    with ThreadPoolExecutor(2) as pool:
        replicas = list(pool.map(lambda _: start_ers(workdir, env=env), range(2)))
    try:
        for replica in replicas:
            replica.wait_for_backups()
        with httpx.Client(timeout=30) as client:
            for replica in replicas:
                check = client.get(f"{replica.url}/api/emergency/health").json()["checks"]
                assert check["repository"]["status"] == "healthy", check["repository"]
            incidents = client.get(f"{replicas[0].url}/api/emergency/incidents").json()
            critical = [
                i for i in incidents["incidents"] if i["classification"]["severity"] == "critical"
            ]
            assert not critical, critical
    finally:
        for replica in replicas:
            replica.stop()


def run_ers(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("ers")), *args],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("ERS_")}, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_a_backup_of_every_component_names_each_snapshot_and_the_host_restic_recorded(
    tmp_path: Path, pg_url: str
) -> None:
    """On PostgreSQL a backup of the whole state is one snapshot per component: the reply
    and the CLI's summary name each snapshot with the component it holds, and add up what
    they stored (before: the first snapshot was said to hold every component, and its
    figures stood for all). The list shows the hostname restic recorded, the same through
    the service as offline (before: `-` for the snapshots the service had just made)."""
    work = tmp_path / "ers"
    env = {
        "ERS_DATABASE_URL": pg_url,
        "ERS_BACKUPS_ENABLED": "true",
        "ERS_BACKUP_SCHEDULE_ENABLED": "false",
    }
    ers = start_ers(work, env=env)
    try:
        ers.wait_for_backups()
        created = json.loads(run_ers(["backup", "create", "-o", "json", "--url", ers.url]).stdout)
        snapshots = created["snapshots"]
        held = [component for s in snapshots for component in s["components"]]
        assert sorted(held) == sorted(created["components"]), created
        assert all(len(s["components"]) == 1 for s in snapshots), created
        assert len({s["backupId"] for s in snapshots}) == len(snapshots) == 5
        assert created["backupId"] == snapshots[0]["backupId"]
        # Each component's dump is a new file of its own snapshot: five, not the first's one.
        assert created["summary"]["filesNew"] == 5, created

        table = run_ers(["backup", "create", "--url", ers.url]).stdout
        assert table.startswith("5 snapshots (manual) in "), table
        for component in created["components"]:
            assert f" {component}" in table, table

        restic = json.loads(
            subprocess.run(
                ["restic", "snapshots", "--json", "--no-lock"],
                env={
                    **os.environ,
                    "RESTIC_REPOSITORY": str(work / "repo"),
                    "RESTIC_PASSWORD_FILE": str(work / "restic-password"),
                },
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
        )
        recorded = {s["id"][:8]: s["hostname"] for s in restic}
        listed = json.loads(run_ers(["backup", "list", "-o", "json", "--url", ers.url]).stdout)
        offline = json.loads(
            run_ers(
                ["backup", "--offline", "list", "-o", "json"], offline_settings(work, pg_url)
            ).stdout
        )
        for name, shown in (("online", listed), ("offline", offline)):
            hosts = {s["backupId"][:8]: s["hostname"] for s in shown["backups"]}
            assert hosts == recorded, (name, hosts, recorded)
        assert {s["backupId"][:8] for s in snapshots} <= recorded.keys()
    finally:
        assert ers.stop() == 0, ers.log()


def test_a_rollback_of_a_component_another_replica_is_rolling_back_is_refused_by_name(
    tmp_path: Path, pg_url: str
) -> None:
    """Two replicas roll budgets back at once: the one that comes second is refused with a
    409 that says what runs and what to do, and the first one completes; not a 503 naming
    PostgreSQL's "tuple concurrently updated" that opens an incident."""
    from concurrent.futures import ThreadPoolExecutor

    env = {
        "ERS_DATABASE_URL": pg_url,
        "ERS_BACKUPS_ENABLED": "true",
        "ERS_BACKUP_SCHEDULE_ENABLED": "false",
        "ERS_RESTIC_REPOSITORY": str(tmp_path / "repo"),
        "ERS_RESTIC_PASSWORD_FILE": str(tmp_path / "restic-password"),
    }
    first = start_ers(tmp_path / "a", env=env)
    second = None
    try:
        first.wait_for_backups()
        second = start_ers(tmp_path / "b", env=env)
        second.wait_for_backups()
        a = httpx.Client(base_url=first.url, timeout=120)
        b = httpx.Client(base_url=second.url, timeout=120)
        chat(a, "I spent 12 dollars on lunch")
        made = post(a, "/api/emergency/backups/create", {"type": "budgets"})
        chat(b, "I spent 30 dollars on books")
        rollback = {"backupId": made["backupId"], "confirm": True, "components": ["budgets"]}

        with psycopg.connect(pg_url) as holder, ThreadPoolExecutor(1) as pool:
            # The first replica's rollback takes its place, then waits for this table lock.
            holder.execute("LOCK TABLE ers_budgets.expenses IN EXCLUSIVE MODE")
            body = rollback | {"reason": "a"}
            running = pool.submit(a.post, "/api/emergency/rollback", json=body)
            with psycopg.connect(pg_url, autocommit=True) as watcher:
                for _ in range(600):
                    waiting = watcher.execute(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'relation' AND NOT granted"
                    ).fetchone()
                    if (waiting or (0,))[0] > 0 or running.done():
                        break
                    time.sleep(0.05)
            assert not running.done(), running.result().text

            refused = b.post("/api/emergency/rollback", json=rollback | {"reason": "b"})
            holder.rollback()  # the table lock goes: the first rollback goes on
            done = running.result()

        assert refused.status_code == 409, refused.text
        detail = refused.json()["detail"]
        assert "a rollback of budgets is already running" in detail
        assert "wait for it to finish" in detail
        assert done.status_code == 200, done.text
        assert expenses(pg_url) == 1  # the first rollback's snapshot: lunch, not books
        audit = a.get("/api/emergency/audit").json()["entries"]
        outcomes = [e["detail"] for e in audit if e["action"] == "rollback"]
        assert any("already running" in str(d.get("error", "")) for d in outcomes), outcomes
        found = a.get("/api/emergency/incidents", params={"component": "backups"}).json()
        assert found["incidents"] == [], found
    finally:
        for replica in (second, first):
            if replica is not None:
                replica.stop()


def test_a_rollback_to_a_snapshot_of_an_older_schema_leaves_keyed_chats_working(
    tmp_path: Path, pg_url: str
) -> None:
    """A snapshot taken before the column of the stores a keyed request wrote existed:
    before, restoring it dropped the column for good (the migrations' ledger is not rolled
    back), and every chat with an Idempotency-Key failed with a 503."""
    env = {
        "ERS_DATABASE_URL": pg_url,
        "ERS_BACKUPS_ENABLED": "true",
        "ERS_BACKUP_SCHEDULE_ENABLED": "false",
    }
    ers = start_ers(tmp_path / "ers", env=env)
    try:
        ers.wait_for_backups()
        with httpx.Client(base_url=ers.url, timeout=30) as client:
            chat(client, "spent $5 on tea", key="older")
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute("ALTER TABLE ers_conversations.idempotency_keys DROP COLUMN wrote")
            older = post(client, "/api/emergency/backups/create", {"type": "conversations"})
            with psycopg.connect(pg_url, autocommit=True) as conn:  # this release's start
                conn.execute("ALTER TABLE ers_conversations.idempotency_keys ADD COLUMN wrote TEXT")
            body = {
                "backupId": older["backupId"],
                "components": ["conversations"],
                "confirm": True,
                "reason": "older replies",
            }
            rolled = post(client, "/api/emergency/rollback", body)
            assert not [n for n in rolled["restored"] if "not" in n], rolled
            assert "Recorded $7.00" in chat(client, "spent $7 on tea", key="after")
            again = client.post(
                "/chat",
                json={"message": "spent $7 on tea", "userId": USER},
                headers={"Idempotency-Key": "after"},
            )
            assert again.headers.get("Idempotent-Replayed") == "true", again.text
    finally:
        assert ers.stop() == 0, ers.log()
