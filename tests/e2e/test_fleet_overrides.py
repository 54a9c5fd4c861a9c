"""Two real ERS replicas (uvicorn processes) on one PostgreSQL database: an Alertmanager
webhook delivered to replica A isolates the agent in replica B too, and the resolved alert
releases it in both; a failure hit on both is one incident; one replica runs the scheduled
backups, and another takes them over when it stops."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ErsProcess, start_ers, tagged_snapshots

TOKEN = "fleet-alert-token-7c1d"
AGENT = "workout"
DEADLINE_S = 5.0


def alert_payload(status: str) -> dict[str, Any]:
    labels = {
        "alertname": "AgentErrorRatioHigh",
        "agent": AGENT,
        "action": "isolate",
        "severity": "critical",
        "job": "ers",
    }
    return {
        "version": "4",
        "groupKey": '{}/{action="isolate"}:{alertname="AgentErrorRatioHigh", agent="workout"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "ers-isolate",
        "groupLabels": {"alertname": "AgentErrorRatioHigh", "agent": AGENT},
        "commonLabels": labels,
        "commonAnnotations": {"summary": "workout agent failing"},
        "externalURL": "http://alertmanager:9093",
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": {"summary": "workout agent failing"},
                "startsAt": "2026-11-28T12:00:00.000Z",
                "endsAt": "2026-11-28T12:10:00.000Z"
                if status == "resolved"
                else "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": "5e0f1c9a2b3d4e5f",
            }
        ],
    }


def state_of(replica: ErsProcess) -> str:
    reply = httpx.get(f"{replica.url}/api/emergency/circuit-breakers/{AGENT}", timeout=5)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["state"])


def wait_for_state(replicas: list[ErsProcess], wanted: set[str], what: str) -> float:
    """Seconds until every replica's breaker is in one of ``wanted``; bounded."""
    started = time.monotonic()
    while True:
        states = [state_of(replica) for replica in replicas]
        if all(state in wanted for state in states):
            return time.monotonic() - started
        if time.monotonic() - started > DEADLINE_S:
            raise AssertionError(f"{what}: breaker states {states} after {DEADLINE_S:g} s")
        time.sleep(0.05)


def post_alert(replica: ErsProcess, status: str) -> None:
    reply = httpx.post(
        f"{replica.url}/api/emergency/alerts",
        json=alert_payload(status),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text


def test_an_alert_to_one_replica_isolates_the_agent_in_both_and_its_resolution_releases_both(
    tmp_path: Path, pg_url: str
) -> None:
    env = {"ERS_DATABASE_URL": pg_url, "ERS_ALERT_TOKEN": TOKEN}
    replicas: list[ErsProcess] = []
    try:
        replicas.append(start_ers(tmp_path / "a", env=env))
        replicas.append(start_ers(tmp_path / "b", env=env))
        a, b = replicas
        assert state_of(a) == state_of(b) == "closed"

        post_alert(a, "firing")
        # Within 5 s of the delivery to a, both are forced open.
        wait_for_state([a, b], {"forced_open"}, "both replicas after the firing alert")
        forced = httpx.get(f"{b.url}/api/emergency/circuit-breakers/{AGENT}").json()["forced"]
        assert forced["source"] == "alertmanager"
        assert "AgentErrorRatioHigh" in forced["reason"] and "fleet override" in forced["reason"]

        post_alert(a, "resolved")
        # Released: half-open, so that trial calls decide whether the agent has healed.
        wait_for_state([a, b], {"half_open", "closed"}, "both replicas after the resolution")
    finally:
        for replica in replicas:
            replica.stop()
    for replica in replicas:
        assert "Traceback" not in replica.log(), replica.log()[-3000:]


def incidents_of(replica: ErsProcess, component: str) -> list[dict[str, Any]]:
    reply = httpx.get(
        f"{replica.url}/api/emergency/incidents", params={"component": component}, timeout=5
    )
    assert reply.status_code == 200, reply.text
    return list(reply.json()["incidents"])


def test_one_failure_hit_on_both_replicas_is_one_incident_with_both_counts(
    tmp_path: Path, pg_url: str
) -> None:
    # Neither the responder nor a breaker may stop the failing calls before all are made.
    env = {
        "ERS_DATABASE_URL": pg_url,
        "ERS_AUTO_RESPONSE_ENABLED": "false",
        "ERS_CIRCUIT_BREAKER_THRESHOLD": "100",
    }
    replicas: list[ErsProcess] = []
    try:
        replicas.append(start_ers(tmp_path / "a", env=env))
        replicas.append(start_ers(tmp_path / "b", env=env))
        # Three failing budget chats on a and two on b (each retried inside one agent span,
        # fewer attempts than a breaker judges a failure rate on).
        for replica, failures in zip(replicas, (3, 2), strict=True):
            fault = {"component": "budget", "errorType": "database"}
            reply = httpx.post(f"{replica.url}/api/emergency/simulate-error", json=fault)
            assert reply.status_code == 200, reply.text
            for _ in range(failures):
                chat = httpx.post(
                    f"{replica.url}/chat", json={"message": "budget report", "userId": "u1"}
                )
                assert chat.status_code == 200 and chat.json()["success"] is False, chat.text

        deadline = time.monotonic() + DEADLINE_S
        while True:
            seen = [incidents_of(replica, "budget") for replica in replicas]
            if all(len(s) == 1 and s[0]["count"] == 5 for s in seen):
                break
            assert time.monotonic() < deadline, f"incidents as each replica sees them: {seen}"
            time.sleep(0.1)
        assert seen[0][0]["id"] == seen[1][0]["id"]
        assert seen[0][0]["fingerprint"].startswith("budget:database:")
        assert len(seen[0][0]["traceIds"]) == 5
        # Each replica's system state moved on its own, and its note says which replica's.
        url = f"{replicas[0].url}/api/emergency/incidents/{seen[0][0]['id']}"
        while True:
            timeline = httpx.get(url, timeout=10).json()["timeline"]
            notes = [e for e in timeline if e["kind"] == "state_changed"]
            if len(notes) >= 2:
                break
            assert time.monotonic() < deadline, f"state notes: {notes}"
            time.sleep(0.1)
        assert all(" on replica " in note["message"] for note in notes), notes
        assert len({note["message"] for note in notes}) == len(notes), notes
    finally:
        for replica in replicas:
            replica.stop()
    for replica in replicas:
        assert "Traceback" not in replica.log(), replica.log()[-3000:]


def scheduled_snapshots(repository: Path, password_file: Path) -> list[dict[str, Any]]:
    """The repository's scheduled snapshots, read with restic itself."""
    try:
        return tagged_snapshots(repository, password_file, "reason:scheduled")
    except subprocess.CalledProcessError:
        return []  # not initialised yet


def test_exactly_one_replica_runs_the_scheduled_backups_and_another_takes_over(
    tmp_path: Path, pg_url: str
) -> None:
    repository, password_file = tmp_path / "repo", tmp_path / "restic-password"
    env = {
        "ERS_DATABASE_URL": pg_url,
        "ERS_BACKUPS_ENABLED": "true",
        "ERS_BACKUP_SCHEDULE_ENABLED": "true",
        # One repository for the fleet, as compose's rest-server is.
        "ERS_RESTIC_REPOSITORY": str(repository),
        "ERS_RESTIC_PASSWORD_FILE": str(password_file),
    }
    replicas: list[ErsProcess] = []
    try:
        replicas.append(start_ers(tmp_path / "a", env=env))
        replicas.append(start_ers(tmp_path / "b", env=env))
        # Each replica would take a full backup as soon as its schedule starts; the jobs
        # lock lets one of them. Bounded wait for its five snapshots, one per component.
        deadline = time.monotonic() + 90
        while len(snapshots := scheduled_snapshots(repository, password_file)) < 5:
            assert time.monotonic() < deadline, f"scheduled snapshots: {snapshots}"
            time.sleep(0.5)
        time.sleep(5)  # room for a second runner's backups, if there were one
        snapshots = scheduled_snapshots(repository, password_file)
        components = sorted(t for s in snapshots for t in s["tags"] if t.startswith("component:"))
        assert components == [
            "component:budgets",
            "component:conversations",
            "component:incidents",
            "component:profiles",
            "component:system_state",
        ]
        runners = [r for r in replicas if "now runs the fleet jobs" in r.log()]
        assert len(runners) == 1, [r.log()[-2000:] for r in replicas]

        runner = runners[0]
        other = replicas[1 - replicas.index(runner)]
        runner.stop()
        deadline = time.monotonic() + 30
        while "now runs the fleet jobs" not in other.log():
            assert time.monotonic() < deadline, other.log()[-3000:]
            time.sleep(0.2)
    finally:
        for replica in replicas:
            replica.stop()
    for replica in replicas:
        assert "Traceback" not in replica.log(), replica.log()[-3000:]


def test_minimal_mode_on_one_replica_ends_when_another_resolves_its_incident(
    tmp_path: Path, pg_url: str
) -> None:
    replicas: list[ErsProcess] = []
    try:
        replicas.append(start_ers(tmp_path / "a", env={"ERS_DATABASE_URL": pg_url}))
        replicas.append(start_ers(tmp_path / "b", env={"ERS_DATABASE_URL": pg_url}))
        a, b = replicas
        injected = httpx.post(
            f"{a.url}/api/emergency/simulate-error",
            json={"component": "BMA", "errorType": "system"},
            timeout=5,
        )
        assert injected.status_code == 200, injected.text
        minimal: dict[str, Any] = {}
        for _ in range(50):  # a critical failure on a puts a's chat in minimal mode: ~10 s
            httpx.post(f"{a.url}/chat", json={"message": "budget report"}, timeout=10)
            minimal = httpx.get(f"{a.url}/api/emergency/status", timeout=5).json()["minimalMode"]
            if minimal["active"]:
                break
            time.sleep(0.2)
        assert minimal["active"] and minimal["incident"], minimal
        httpx.delete(f"{a.url}/api/emergency/simulate-error", timeout=5).raise_for_status()
        # b follows the mode a keeps in the shared store (every fleet_poll_interval_s, 2 s):
        # it answered with its agents while a was in minimal mode.
        followed = wait_for_minimal_mode(b, True)
        assert followed["incident"] == minimal["incident"], followed
        reply = httpx.post(f"{b.url}/chat", json={"message": "budget report"}, timeout=10)
        assert reply.json()["recovery"]["fallback"] == "minimal", reply.text

        resolved = httpx.post(
            f"{b.url}/api/emergency/incidents/{minimal['incident']}/resolve",
            json={"resolution": "the store was fixed"},
            timeout=5,
        )
        assert resolved.status_code == 200, resolved.text
        assert resolved.json()["minimalModeEnded"] is True
        # a ends its mode as b did (or at its next tick: the shared incident is resolved).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status = httpx.get(f"{a.url}/api/emergency/status", timeout=5).json()
            if not status["minimalMode"]["active"]:
                break
            time.sleep(0.5)
        assert status["minimalMode"]["active"] is False, status["minimalMode"]
        chat = httpx.post(f"{a.url}/chat", json={"message": "make me a workout plan"}, timeout=10)
        assert chat.json()["emergency"] is False, chat.text
    finally:
        for replica in replicas:
            replica.stop()
    for replica in replicas:
        assert "Traceback" not in replica.log(), replica.log()[-3000:]


def wait_for_minimal_mode(replica: ErsProcess, active: bool) -> dict[str, Any]:
    """The replica's minimal mode once it is ``active`` (or not); bounded."""
    deadline = time.monotonic() + 10
    while True:
        status = httpx.get(f"{replica.url}/api/emergency/status", timeout=5).json()
        if status["minimalMode"]["active"] is active:
            return dict(status["minimalMode"])
        if time.monotonic() > deadline:
            raise AssertionError(f"minimal mode not {active} within 10 s: {status}")
        time.sleep(0.2)


def test_minimal_mode_reaches_every_replica_and_an_operators_end_ends_it_on_all(
    tmp_path: Path, pg_url: str
) -> None:
    """The responder of the replica that saw the critical failure turned minimal mode on
    there only, behind a load balancer half the chats still reached the agents, and `ers
    minimal-mode end` sent to one replica left the others in it."""
    replicas: list[ErsProcess] = []
    try:
        replicas.append(start_ers(tmp_path / "a", env={"ERS_DATABASE_URL": pg_url}))
        replicas.append(start_ers(tmp_path / "b", env={"ERS_DATABASE_URL": pg_url}))
        a, b = replicas
        httpx.post(
            f"{a.url}/api/emergency/simulate-error",
            json={"component": "BMA", "errorType": "system", "message": "fatal crash"},
            timeout=5,
        ).raise_for_status()
        httpx.post(f"{a.url}/chat", json={"message": "budget report"}, timeout=10)
        on_a = wait_for_minimal_mode(a, True)
        on_b = wait_for_minimal_mode(b, True)
        assert on_b["incident"] == on_a["incident"]
        assert abs(on_b["remainingSeconds"] - on_a["remainingSeconds"]) < 5

        ended = subprocess.run(
            [str(Path(sys.executable).with_name("ers")), "--url", b.url, "minimal-mode", "end"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ended.returncode == 0, ended.stderr
        assert "minimal response mode ended" in ended.stdout
        wait_for_minimal_mode(a, False)
        chat = httpx.post(f"{a.url}/chat", json={"message": "plan my meals"}, timeout=10)
        assert chat.json()["recovery"] is None or chat.json()["recovery"]["fallback"] != "minimal"
    finally:
        for replica in replicas:
            replica.stop()
    for replica in replicas:
        assert "Traceback" not in replica.log(), replica.log()[-3000:]


def test_a_snapshot_one_replica_makes_is_listed_by_the_other_within_a_poll(
    tmp_path: Path, pg_url: str
) -> None:
    env = {
        "ERS_DATABASE_URL": pg_url,
        "ERS_BACKUPS_ENABLED": "true",
        "ERS_BACKUP_SCHEDULE_ENABLED": "false",
        "ERS_FLEET_POLL_INTERVAL_S": "1",
        "ERS_RESTIC_REPOSITORY": str(tmp_path / "repo"),
        "ERS_RESTIC_PASSWORD_FILE": str(tmp_path / "restic-password"),
    }
    replicas: list[ErsProcess] = []
    try:
        replicas.append(start_ers(tmp_path / "a", env=env))
        replicas.append(start_ers(tmp_path / "b", env=env))
        a, b = replicas

        def listed(replica: ErsProcess) -> list[str]:
            reply = httpx.get(f"{replica.url}/api/emergency/backups", timeout=10)
            if reply.status_code != 200:  # the repository is not reached yet
                return []
            # Short ids: a replica lists the snapshots it made by restic's short id.
            return sorted(s["backupId"][:8] for s in reply.json()["backups"])

        # Each replica reaches the repository on its own, a first: both must have.
        a.wait_for_backups()
        b.wait_for_backups()
        made = httpx.post(
            f"{a.url}/api/emergency/backups/create", json={"reason": "before-upgrade"}, timeout=60
        )
        assert made.status_code == 200, made.text
        on_a = listed(a)
        assert made.json()["backupId"][:8] in on_a
        # b's own refresh is minutes away (backup_refresh_interval_s); a's stamp is seen at
        # b's next poll of the fleet's state, every second here, and b then reads the list
        # from restic (seconds on a loaded machine: 10 s was once not enough).
        deadline = time.monotonic() + 60
        while listed(b) != on_a:
            assert time.monotonic() < deadline, (listed(b), on_a, b.log()[-1000:])
            time.sleep(0.2)
    finally:
        for replica in replicas:
            replica.stop()


def test_a_chat_long_after_a_release_runs_the_trial_and_closes_the_breaker(
    tmp_path: Path, pg_url: str
) -> None:
    """Before: on PostgreSQL the trial lease asked for at the release lapsed (its trial's
    limit and 5 s) with no chat, and each later chat was turned away while the lease was
    asked for again, which lapsed before the next: with chats further apart than that, every
    one got a fallback and the breaker stayed half-open, the agent healthy all along."""
    breakers = json.dumps({AGENT: {"half_open_max_wait_s": 0.5}})  # a lease of 5.5 s
    env = {"ERS_DATABASE_URL": pg_url, "ERS_ALERT_TOKEN": TOKEN, "ERS_AGENT_BREAKERS": breakers}
    ers = start_ers(tmp_path / "a", env=env)
    try:
        post_alert(ers, "firing")
        wait_for_state([ers], {"forced_open"}, "after the firing alert")
        released = httpx.post(f"{ers.url}/api/emergency/circuit-breaker/{AGENT}/release")
        assert released.status_code == 200, released.text
        assert state_of(ers) == "half_open"
        time.sleep(6.5)  # no chat while the lease lapses
        chat = {"message": "beginner workout plan", "userId": "sparse"}
        reply = httpx.post(f"{ers.url}/chat", json=chat, timeout=30).json()
        assert reply["success"] is True, reply
        assert state_of(ers) == "closed"
    finally:
        ers.stop()
    assert "Traceback" not in ers.log(), ers.log()[-3000:]
