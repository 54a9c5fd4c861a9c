"""Isolations outlive the process: a breaker forced open (by the CLI, with a reason, a source
and an expiry) and a disabled breaker are still there after ``ers serve`` is stopped with
SIGTERM or killed with SIGKILL and started again on the same data directory; a forced open
whose time ran out meanwhile is dropped; a recovery keeps watching; and a rollback of
``system_state`` through the API puts the snapshot's isolations back and says so."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import ErsProcess, start_ers
from tests.e2e.test_fleet_overrides import TOKEN, alert_payload

BREAKERS = "/api/emergency/circuit-breakers"


def ers_cli(ers: ErsProcess, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", *args, "--url", ers.url, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("ERS_")},
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def breakers(ers: ErsProcess) -> dict[str, dict[str, Any]]:
    return dict(httpx.get(f"{ers.url}{BREAKERS}", timeout=10).json()["breakers"])


def forced_opens(ers: ErsProcess) -> dict[str, float]:
    """``ers_breaker_forced_opens_total`` per agent, as Prometheus would scrape it."""
    counts: dict[str, float] = {}
    for line in httpx.get(f"{ers.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("ers_breaker_forced_opens_total{"):
            agent = line.split('agent="', 1)[1].split('"', 1)[0]
            counts[agent] = counts.get(agent, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def kept_records(workdir: Path) -> dict[str, Any]:
    """The system_state store as another reader sees it on disk."""
    with sqlite3.connect(workdir / "data" / "system_state.sqlite3") as conn:
        rows = conn.execute("SELECT key, value FROM state").fetchall()
    return {key: json.loads(value) for key, value in rows}


def roll_back_the_isolation(http: httpx.Client, backup: httpx.Response) -> None:
    """Roll system_state back to ``backup``, taken while workout was forced open."""
    rolled = http.post(
        "/api/emergency/rollback",
        json={
            "backupId": backup.json()["backupId"],
            "components": ["system_state"],
            "confirm": True,
            "reason": "the isolation was lifted too early",
        },
    )
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["restored"] == [
        "restored 1 forced open: workout until released (admin:loopback: bad plans)"
    ]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_forced_open_and_disabled_breakers_survive_a_restart(
    tmp_path: Path, sig: signal.Signals
) -> None:
    workdir = tmp_path / "ers"
    ers = start_ers(workdir)
    try:
        forced = ers_cli(
            ers, "breakers", "force-open", "WPA", "--reason", "bad plans", "--ttl", "3600"
        )
        assert forced["saved"] is True
        disabled = ers_cli(ers, "breakers", "disable", "BMA")
        assert disabled["breaker"]["state"] == "disabled" and disabled["saved"] is True
        before = breakers(ers)
        assert forced_opens(ers) == {"workout": 1.0}
    finally:
        ers.stop(sig)
    assert before["workout"]["state"] == "forced_open"
    expires_at = before["workout"]["forced"]["expiresAt"]
    assert expires_at is not None

    again = start_ers(workdir)
    try:
        after = breakers(again)
        workout = after["workout"]
        assert workout["state"] == "forced_open"
        assert workout["forced"] == {
            "reason": "bad plans",
            "source": "admin:loopback",
            "expiresAt": expires_at,
        }
        assert after["budget"]["state"] == "disabled"
        assert after["nutrition"]["state"] == "closed"
        reply = httpx.post(
            f"{again.url}/chat", json={"message": "make me a workout plan"}, timeout=10
        ).json()
        assert reply["emergency"] is True  # still isolated: fallbacks answer
        status = httpx.get(f"{again.url}/api/emergency/status", timeout=10).json()
        assert status["systemState"] == "degraded"
        assert "restored 1 forced open: workout until" in again.log()
        # The same isolation put back, not a new one: the counter does not count it again.
        assert forced_opens(again) == {}

        # Lifting them is kept too: after the next restart they stay lifted.
        ers_cli(again, "breakers", "release", "workout")
        ers_cli(again, "breakers", "enable", "budget")
    finally:
        again.stop(sig)
    assert kept_records(workdir).keys() == {"system"}
    third = start_ers(workdir)
    try:
        states = {name: b["state"] for name, b in breakers(third).items()}
        assert states == dict.fromkeys(("router", "nutrition", "workout", "budget"), "closed")
    finally:
        third.stop()


def test_a_forced_open_that_expired_while_down_is_dropped(tmp_path: Path) -> None:
    workdir = tmp_path / "ers"
    ers = start_ers(workdir)
    try:
        # Long enough to be still in force at the kill on a busy machine, short to wait out.
        forced = ers_cli(ers, "breakers", "force-open", "workout", "--reason", "r", "--ttl", "5")
        expires_at = datetime.fromisoformat(forced["breaker"]["forced"]["expiresAt"])
        ers_cli(ers, "breakers", "force-open", "budget", "--reason", "long", "--ttl", "3600")
    finally:
        ers.stop(signal.SIGKILL)
    assert kept_records(workdir)["breaker:workout"]["state"] == "forced_open"
    while time.time() <= expires_at.timestamp():
        time.sleep(0.1)

    again = start_ers(workdir)
    try:
        after = breakers(again)
        assert after["workout"]["state"] == "closed" and after["workout"]["forced"] is None
        assert after["budget"]["state"] == "forced_open"
        assert "dropped expired: workout forced open until" in again.log()
    finally:
        again.stop()
    assert "breaker:workout" not in kept_records(workdir)


def test_a_restored_forced_open_keeps_the_time_it_was_forced(tmp_path: Path) -> None:
    """``ers breakers show`` after a restart: the history's forced open and ``opened`` both
    say when the operator forced the breaker, not when it was put back; after a renewal and
    a second restart too. Before, the history said the restart's time, and a renewal or the
    first restart became ``opened`` after the next one."""
    workdir = tmp_path / "ers"
    ers = start_ers(workdir)
    try:
        ers_cli(ers, "breakers", "force-open", "workout", "--reason", "bad plans")
        ers_cli(ers, "breakers", "force-open", "workout", "--reason", "still bad plans")
        shown = ers_cli(ers, "breakers", "show", "workout")
    finally:
        ers.stop()
    opened = shown["openedAt"]
    assert [(e["kind"], e["at"]) for e in shown["history"]][0] == ("state_transition", opened)

    for _ in range(2):  # the second start reads back what the first one stored
        again = start_ers(workdir)
        try:
            restored = ers_cli(again, "breakers", "show", "workout")
        finally:
            again.stop()
        assert restored["state"] == "forced_open"
        history = [(e["from"], e["to"], e["at"]) for e in restored["history"]]
        assert history == [("closed", "forced_open", opened)]
        assert restored["openedAt"] == opened


def test_a_recovery_keeps_watching_across_a_restart(tmp_path: Path) -> None:
    workdir = tmp_path / "ers"
    # A long clean period: the recovery cannot end by itself while this test runs.
    env = {"ERS_RECOVERY_CLEAN_S": "3600"}
    ers = start_ers(workdir, env=env)
    try:
        ers_cli(ers, "breakers", "force-open", "workout", "--reason", "drill")
        ers_cli(ers, "breakers", "release", "workout")
        # Half-open: out until a trial closes it, which a chat to it runs.
        status = httpx.get(f"{ers.url}/api/emergency/status", timeout=10).json()
        assert status["systemState"] == "degraded"
        chat = {"message": "make me a workout plan"}
        assert httpx.post(f"{ers.url}/chat", json=chat, timeout=10).json()["success"] is True
        status = httpx.get(f"{ers.url}/api/emergency/status", timeout=10).json()
        assert status["systemState"] == "recovery"
    finally:
        ers.stop()
    since = kept_records(workdir)["system"]["since"]

    again = start_ers(workdir, env=env)
    try:
        status = httpx.get(f"{again.url}/api/emergency/status", timeout=10).json()
        assert status["systemState"] == "recovery"  # not a fresh "normal"
        assert kept_records(workdir)["system"]["since"] == since
    finally:
        again.stop()


def test_a_rollback_of_system_state_restores_the_snapshots_isolations(tmp_path: Path) -> None:
    workdir = tmp_path / "ers"
    env = {"ERS_BACKUPS_ENABLED": "true", "ERS_BACKUP_SCHEDULE_ENABLED": "false"}
    ers = start_ers(workdir, env=env)
    try:
        ers.wait_for_backups()
        with httpx.Client(base_url=ers.url, timeout=120) as http:
            forced = ers_cli(ers, "breakers", "force-open", "workout", "--reason", "bad plans")
            assert forced["breaker"]["state"] == "forced_open"
            backup = http.post("/api/emergency/backups/create", json={"type": "system_state"})
            assert backup.status_code == 200, backup.text
            reset = ers_cli(ers, "breakers", "reset", "workout", "--force")
            assert reset["breaker"]["state"] == "closed"
            assert "breaker:workout" not in kept_records(workdir)

            roll_back_the_isolation(http, backup)
            workout = http.get(f"{BREAKERS}/workout").json()
            assert workout["state"] == "forced_open"
            assert workout["forced"]["reason"] == "bad plans"
            assert kept_records(workdir)["breaker:workout"]["state"] == "forced_open"
    finally:
        assert ers.stop() == 0


def fleet_versions(pg_url: str) -> dict[str, tuple[bool, int]]:
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT agent, forced, version FROM ers_fleet.overrides").fetchall()
    return {agent: (forced, version) for agent, forced, version in rows}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_on_postgresql_the_fleet_and_the_kept_state_agree_across_a_restart(
    tmp_path: Path, pg_url: str, sig: signal.Signals
) -> None:
    env = {"ERS_DATABASE_URL": pg_url}
    ers = start_ers(tmp_path / "ers", env=env)
    try:
        forced = ers_cli(
            ers, "breakers", "force-open", "workout", "--reason", "bad plans", "--ttl", "3600"
        )
        expires_at = datetime.fromisoformat(forced["breaker"]["forced"]["expiresAt"])
        ers_cli(ers, "breakers", "disable", "budget")
        deadline = time.monotonic() + 10
        while "workout" not in fleet_versions(pg_url) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        ers.stop(sig)
    before = fleet_versions(pg_url)
    assert before["workout"][0] is True

    again = start_ers(tmp_path / "ers", env=env)
    try:
        after = breakers(again)
        workout = after["workout"]
        assert workout["state"] == "forced_open"
        assert workout["forced"]["source"] == "admin:loopback"
        assert workout["forced"]["reason"].startswith("bad plans")
        restored_until = datetime.fromisoformat(workout["forced"]["expiresAt"])
        assert abs((restored_until - expires_at).total_seconds()) < 1
        assert after["budget"]["state"] == "disabled"
        # The forced open came back from the fleet's table alone: nothing wrote it again.
        assert fleet_versions(pg_url) == before
    finally:
        again.stop()


def test_an_alerts_isolation_survives_a_kill_9(tmp_path: Path) -> None:
    workdir = tmp_path / "ers"
    ers = start_ers(workdir, env={"ERS_ALERT_TOKEN": TOKEN})
    try:
        deliver_firing(ers)
        deadline = time.monotonic() + 10
        while "breaker:workout" not in kept_records(workdir):
            assert time.monotonic() < deadline, f"the alert's isolation was not kept: {ers.log()}"
            time.sleep(0.05)
        before = breakers(ers)["workout"]
        with httpx.Client(base_url=ers.url, timeout=10) as http:
            turned_away = workout_reply(http)  # says what the alert did: before, nothing
        assert {"action": "isolate", "result": "success"} in turned_away["recovery"]["actions"]
    finally:
        ers.stop(signal.SIGKILL)
    assert before["state"] == "forced_open"

    again = start_ers(workdir, env={"ERS_ALERT_TOKEN": TOKEN})
    try:
        after = breakers(again)["workout"]
        assert after["state"] == "forced_open"
        assert after["forced"] == before["forced"]
    finally:
        again.stop()


def test_on_postgresql_a_rollback_of_system_state_isolates_through_the_fleet(
    tmp_path: Path, pg_url: str
) -> None:
    env = {
        "ERS_DATABASE_URL": pg_url,
        "ERS_BACKUPS_ENABLED": "true",
        "ERS_BACKUP_SCHEDULE_ENABLED": "false",
    }
    ers = start_ers(tmp_path / "ers", env=env)
    try:
        ers.wait_for_backups()
        with httpx.Client(base_url=ers.url, timeout=120) as http:
            ers_cli(ers, "breakers", "force-open", "workout", "--reason", "bad plans")
            backup = http.post("/api/emergency/backups/create", json={"type": "system_state"})
            assert backup.status_code == 200, backup.text
            ers_cli(ers, "breakers", "reset", "workout", "--force")
            roll_back_the_isolation(http, backup)
            assert http.get(f"{BREAKERS}/workout").json()["state"] == "forced_open"
            # Shared with the fleet, so every replica holds it open.
            deadline = time.monotonic() + 10
            while fleet_versions(pg_url).get("workout", (False, 0))[0] is not True:
                assert time.monotonic() < deadline, fleet_versions(pg_url)
                time.sleep(0.05)
    finally:
        assert ers.stop() == 0


def test_minimal_mode_survives_kill_9_until_its_moment(tmp_path: Path) -> None:
    """A real critical failure puts chat in minimal mode; after `kill -9` and a start on the
    same data directory chat still answers in minimal mode, until the same moment."""
    workdir = tmp_path / "ers"
    ers = start_ers(workdir)
    try:
        with httpx.Client(base_url=ers.url, timeout=10) as http:
            injected = http.post(
                "/api/emergency/simulate-error", json={"component": "BMA", "errorType": "system"}
            )
            assert injected.status_code == 200, injected.text
            for _ in range(50):  # the responder turns it on: bounded at ten seconds
                http.post("/chat", json={"message": "budget report", "userId": "ann"})
                before = http.get("/api/emergency/status").json()["minimalMode"]
                if before["active"]:
                    break
                time.sleep(0.2)
            assert before["active"] is True, before
            # Saved before the kill (the keeper writes within moments of the change).
            for _ in range(50):
                if "minimal_mode" in kept_records(workdir):
                    break
                time.sleep(0.1)
            assert kept_records(workdir)["minimal_mode"]["reason"] == before["reason"]
    finally:
        ers.stop(signal.SIGKILL)

    ers = start_ers(workdir)
    try:
        with httpx.Client(base_url=ers.url, timeout=10) as http:
            after = http.get("/api/emergency/status").json()["minimalMode"]
            assert after["active"] is True and after["reason"] == before["reason"]
            assert after["incident"] == before["incident"] and before["incident"]
            assert 0 < after["remainingSeconds"] <= before["remainingSeconds"]
            chat = http.post("/chat", json={"message": "make me a workout plan"}).json()
            assert chat["emergency"] is True and chat["recovery"]["fallback"] == "minimal"
            assert chat["incident"] == before["incident"]
            ended = http.delete("/api/emergency/minimal-mode")
            assert ended.status_code == 200 and ended.json()["ended"] is True
            for _ in range(50):
                if "minimal_mode" not in kept_records(workdir):
                    break
                time.sleep(0.1)
            assert "minimal_mode" not in kept_records(workdir)
    finally:
        ers.stop()


def workout_reply(http: httpx.Client) -> dict[str, Any]:
    reply = http.post("/chat", json={"message": "make me a workout plan", "userId": "ann"})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def isolated_for_an_incident(http: httpx.Client, workdir: Path) -> str:
    """The workout agent fails (a database error, whose protocol isolates it): the incident
    its turned-away replies name, once the isolation is kept (bounded waits)."""
    fault = {"component": "WPA", "errorType": "database"}
    assert http.post("/api/emergency/simulate-error", json=fault).status_code == 200
    for _ in range(100):
        reply = workout_reply(http)
        if reply["incident"] and http.get(f"{BREAKERS}/workout").json()["state"] == "forced_open":
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the responder did not isolate workout for an incident")
    incident_id = str(reply["incident"])
    for _ in range(100):
        if kept_records(workdir).get("breaker:workout", {}).get("incident") == incident_id:
            return incident_id
        time.sleep(0.05)
    raise AssertionError(f"the isolation for {incident_id} was not kept")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_replies_turned_away_by_a_kept_isolation_name_its_incident_after_a_restart(
    tmp_path: Path, sig: signal.Signals
) -> None:
    workdir = tmp_path / "ers"
    ers = start_ers(workdir)
    try:
        with httpx.Client(base_url=ers.url, timeout=10) as http:
            incident_id = isolated_for_an_incident(http, workdir)
            for _ in range(100):  # the protocol's second action, in force in this process
                done = [a["action"] for a in workout_reply(http)["recovery"]["actions"]]
                if "serve_cached" in done:
                    break
                time.sleep(0.1)
            assert "serve_cached" in done, done
    finally:
        ers.stop(sig)

    again = start_ers(workdir)
    try:
        with httpx.Client(base_url=again.url, timeout=10) as http:
            workout = http.get(f"{BREAKERS}/workout").json()
            assert workout["state"] == "forced_open", workout
            reply = workout_reply(http)
            assert reply["emergency"] is True and reply["incident"] == incident_id, reply
            # What was done, as the incident's timeline says: before, an empty list. Not the
            # cached answers served in the agent's place, which ended with the process.
            assert {"action": "isolate", "result": "success"} in reply["recovery"]["actions"]
            assert "serve_cached" not in [a["action"] for a in reply["recovery"]["actions"]]
    finally:
        again.stop()


def test_on_postgresql_the_fleets_override_carries_the_incident_across_a_kill_9(
    tmp_path: Path, pg_url: str
) -> None:
    workdir = tmp_path / "ers"
    env = {"ERS_DATABASE_URL": pg_url}
    ers = start_ers(workdir, env=env)
    try:
        with httpx.Client(base_url=ers.url, timeout=10) as http:
            fault = {"component": "WPA", "errorType": "database"}
            assert http.post("/api/emergency/simulate-error", json=fault).status_code == 200
            incident_id = None
            for _ in range(100):  # bounded: ten seconds
                reply = workout_reply(http)
                with psycopg.connect(pg_url) as conn:
                    row = conn.execute(
                        "SELECT incident FROM ers_fleet.overrides WHERE agent = 'workout'"
                    ).fetchone()
                if reply["incident"] and row is not None and row[0] == reply["incident"]:
                    incident_id = reply["incident"]
                    break
                time.sleep(0.1)
            assert incident_id is not None, "the fleet's override names no incident"
    finally:
        ers.stop(signal.SIGKILL)

    again = start_ers(workdir, env=env)
    try:
        with httpx.Client(base_url=again.url, timeout=10) as http:
            assert http.get(f"{BREAKERS}/workout").json()["state"] == "forced_open"
            reply = workout_reply(http)
            assert reply["emergency"] is True and reply["incident"] == incident_id, reply
            # What was done, as the incident's timeline says: before, an empty list.
            assert {"action": "isolate", "result": "success"} in reply["recovery"]["actions"]
    finally:
        again.stop()


def test_a_kept_isolation_names_its_incident_only_while_it_is_unresolved(
    tmp_path: Path,
) -> None:
    """An alert's isolation stays when its incident is resolved by hand (Alertmanager lifts
    it): after the next restart the replies it turns away name no resolved incident."""
    workdir = tmp_path / "ers"
    env = {"ERS_ALERT_TOKEN": TOKEN}
    ers = start_ers(workdir, env=env)
    try:
        with httpx.Client(base_url=ers.url, timeout=10) as http:
            fired = http.post(
                "/api/emergency/alerts",
                json=alert_payload("firing"),
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert fired.status_code == 200, fired.text
            for _ in range(100):  # bounded: five seconds
                incident_id = kept_records(workdir).get("breaker:workout", {}).get("incident")
                if incident_id:
                    break
                time.sleep(0.05)
            assert incident_id, kept_records(workdir)
    finally:
        ers.stop(signal.SIGKILL)

    again = start_ers(workdir, env=env)
    try:
        with httpx.Client(base_url=again.url, timeout=10) as http:
            assert workout_reply(http)["incident"] == incident_id
            resolved = http.post(
                f"/api/emergency/incidents/{incident_id}/resolve", json={"resolution": "fixed"}
            )
            assert resolved.status_code == 200, resolved.text
            assert http.get(f"{BREAKERS}/workout").json()["state"] == "forced_open"
    finally:
        again.stop()

    third = start_ers(workdir, env=env)
    try:
        with httpx.Client(base_url=third.url, timeout=10) as http:
            assert http.get(f"{BREAKERS}/workout").json()["state"] == "forced_open"
            reply = workout_reply(http)
            assert reply["emergency"] is True and reply["incident"] is None, reply
    finally:
        third.stop()


def alert_outcome(workdir: Path, status: str) -> str | None:
    """The ledger's outcome of the test alert's delivery, as another reader sees it."""
    with sqlite3.connect(workdir / "data" / "incidents.sqlite3") as conn:
        row = conn.execute(
            "SELECT outcome FROM alert_ledger WHERE alertname = 'AgentErrorRatioHigh'"
            " AND status = ?",
            (status,),
        ).fetchone()
    return None if row is None else row[0]


def deliver_firing(ers: ErsProcess) -> dict[str, Any]:
    """The test's isolate alert, firing, as Alertmanager delivers it."""
    reply = httpx.post(
        f"{ers.url}/api/emergency/alerts",
        json=alert_payload("firing"),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def next_outcome(ers: ErsProcess, read: Callable[[], str | None], before: str | None = None) -> str:
    """The ledger's outcome of the firing, once it is there and not ``before`` (bounded)."""
    deadline = time.monotonic() + 30
    while (outcome := read()) in (None, before):
        assert time.monotonic() < deadline, f"the alert was not acted on: {ers.log()}"
        time.sleep(0.05)
    assert outcome is not None
    return outcome


def test_an_alerts_isolation_not_kept_before_a_kill_9_is_taken_again_by_its_next_delivery(
    tmp_path: Path,
) -> None:
    """The system_state file is locked by another connection (an open sqlite3 shell) while
    an isolate alert arrives: the isolation is in force but cannot be kept. Its ledger entry
    must not say it is done for good, or its next delivery after a kill -9 would be answered
    as a duplicate while the agent, its isolation lost, takes calls again."""
    workdir = tmp_path / "ers"
    ers = start_ers(workdir, env={"ERS_ALERT_TOKEN": TOKEN})
    holder = sqlite3.connect(workdir / "data" / "system_state.sqlite3", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        deliver_firing(ers)
        outcome = next_outcome(ers, lambda: alert_outcome(workdir, "firing"))
        assert breakers(ers)["workout"]["state"] == "forced_open"
    finally:
        ers.stop(signal.SIGKILL)
        holder.close()

    again = start_ers(workdir, env={"ERS_ALERT_TOKEN": TOKEN})
    try:
        reply = deliver_firing(again)
        assert reply["new"] == 1, reply
        assert "not kept across a restart" in outcome, outcome
        again_outcome = next_outcome(again, lambda: alert_outcome(workdir, "firing"), outcome)
        assert again_outcome == "isolate: success"
        assert breakers(again)["workout"]["state"] == "forced_open"
        assert "breaker:workout" in kept_records(workdir)
    finally:
        again.stop()


def pg_alert_outcome(pg_url: str, status: str) -> str | None:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT outcome FROM ers_incidents.alert_ledger WHERE alertname = 'AgentErrorRatioHigh'"
            " AND status = %s",
            (status,),
        ).fetchone()
    return None if row is None else row[0]


def test_on_postgresql_an_isolation_whose_save_waits_on_a_lock_is_said_not_kept(
    tmp_path: Path, pg_url: str
) -> None:
    """Another session holds the system_state table locked while an isolate alert arrives.
    PostgreSQL lets the save wait as long as the lock is held: the alert's action stood
    unanswered (no ledger outcome, an ``action_started`` with no end), and after a kill -9
    that start held the next delivery off as within its cooldown. Said not kept after a
    bounded wait, the next delivery after the restart isolates again."""
    workdir = tmp_path / "ers"
    env = {"ERS_ALERT_TOKEN": TOKEN, "ERS_DATABASE_URL": pg_url}
    ers = start_ers(workdir, env=env)
    holder = psycopg.connect(pg_url)
    try:
        holder.execute("LOCK TABLE ers_system_state.state IN ACCESS EXCLUSIVE MODE")
        deliver_firing(ers)
        outcome = next_outcome(ers, lambda: pg_alert_outcome(pg_url, "firing"))
        assert "not kept across a restart" in outcome, outcome
        assert breakers(ers)["workout"]["state"] == "forced_open"
    finally:
        ers.stop(signal.SIGKILL)
        holder.close()

    again = start_ers(workdir, env=env)
    try:
        reply = deliver_firing(again)
        assert reply["new"] == 1, reply
        again_outcome = next_outcome(again, lambda: pg_alert_outcome(pg_url, "firing"), outcome)
        assert again_outcome == "isolate: success"
        assert breakers(again)["workout"]["state"] == "forced_open"
    finally:
        again.stop()
