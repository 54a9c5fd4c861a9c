"""A real ``ers serve`` on a real PostgreSQL that goes away: while the database is down, the
requests that need it fail on their own (a 503 naming the store), and the rest of the
service (probes, status, chat's answer) keeps answering within its usual bounds; when the
database is back, so is everything that needs it."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from service.health.stores_check import PROBE_WAIT_S
from tests.conftest import ErsProcess, start_ers
from tests.pg import PostgresServer

TOKEN = "outage-alert-token-4b2e"
ADMIN = "outage-admin-token-9f3a"
# No request that the outage does not concern may take longer than this.
QUICK_S = 2.0
# A request that needs the database gives up within the pool's wait for a connection.
STORE_BOUND_S = 10.0
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
ALERT_HEADERS = {"Authorization": f"Bearer {TOKEN}"}
STORES = ("conversations", "profiles", "budgets", "system_state")


def alert(status: str, fingerprint: str) -> dict[str, Any]:
    labels = {"alertname": "AgentErrorRatioHigh", "agent": "workout", "severity": "warning"}
    return {
        "version": "4",
        "groupKey": '{}:{alertname="AgentErrorRatioHigh"}',
        "status": status,
        "receiver": "ers",
        "groupLabels": {"alertname": "AgentErrorRatioHigh"},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": {"summary": "workout agent failing"},
                "startsAt": "2026-11-28T12:00:00.000Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": fingerprint,
            }
        ],
    }


def incident_calls() -> list[tuple[str, str, Any, dict[str, str] | None]]:
    """Requests that need the incident database (or its alert ledger)."""
    return [
        ("GET", "/api/emergency/incidents", None, ADMIN_HEADERS),
        ("GET", "/api/emergency/metrics", None, ADMIN_HEADERS),
        ("POST", "/api/emergency/alerts", alert("firing", "0utage0001"), ALERT_HEADERS),
    ]


def send_in_background(
    ers: ErsProcess,
    calls: list[tuple[str, str, Any, dict[str, str] | None]],
    results: list[tuple[str, int | str]],
) -> list[threading.Thread]:
    """Each request in its own thread: it may wait for the database (bounded), but must not
    hold up anyone else."""

    def call(method: str, path: str, body: Any, headers: Any) -> None:
        try:
            reply = httpx.request(
                method, f"{ers.url}{path}", json=body, headers=headers, timeout=STORE_BOUND_S
            )
            results.append((path, reply.status_code))
        except httpx.HTTPError as exc:
            results.append((path, type(exc).__name__))

    threads = [threading.Thread(target=call, args=c, daemon=True) for c in calls]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # let them reach the server and wait on the database
    return threads


def start_with_an_incident(workdir: Path, url: str) -> ErsProcess:
    """``ers serve`` on the database at ``url``, with an open incident on budget."""
    env = {
        "ERS_DATABASE_URL": url,
        "ERS_ALERT_TOKEN": TOKEN,
        "ERS_ADMIN_TOKEN": ADMIN,
        "ERS_HEALTH_CHECK_INTERVAL_S": "1",
    }
    ers = start_ers(workdir, env=env)
    fault = {"component": "budget", "errorType": "database"}
    reply = httpx.post(f"{ers.url}/api/emergency/simulate-error", json=fault, headers=ADMIN_HEADERS)
    assert reply.status_code == 200, reply.text
    failed = httpx.post(f"{ers.url}/chat", json={"message": "budget report", "userId": "u1"})
    assert failed.status_code == 200 and failed.json()["success"] is False, failed.text
    deadline = time.monotonic() + 10
    while not incidents_of(ers, "budget") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert incidents_of(ers, "budget"), "the failing chat opened no incident"
    return ers


@contextlib.contextmanager
def frozen(server: PostgresServer) -> Iterator[None]:
    """Every process of ``server`` stopped (SIGSTOP) for the block, and let go after it."""
    stopped = cluster_processes(server)
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


def cluster_processes(server: PostgresServer) -> list[int]:
    """The postmaster of the test's own cluster and every process it started."""
    assert server.work_dir is not None
    postmaster = int((server.work_dir / "data" / "postmaster.pid").read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == postmaster:
            children.append(int(stat.parent.name))
    return [postmaster, *children]


def incidents_of(ers: ErsProcess, component: str) -> list[dict[str, Any]]:
    reply = httpx.get(
        f"{ers.url}/api/emergency/incidents",
        params={"component": component},
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=STORE_BOUND_S,
    )
    assert reply.status_code == 200, reply.text
    return list(reply.json()["incidents"])


def wait_until_stores_unhealthy(ers: ErsProcess) -> None:
    """Until a health check has found the stores' database gone (bounded)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        report = quick(ers, "GET", "/api/emergency/health?refresh=false", headers=ADMIN_HEADERS)
        if report.json()["checks"]["stores"]["status"] == "unhealthy":
            return
        time.sleep(0.2)
    raise AssertionError(f"the stores check never saw the database gone: {report.text}")


def incidents_check_once_unread(ers: ErsProcess) -> dict[str, Any]:
    """The incidents check once the active counts could not be read (bounded)."""
    deadline = time.monotonic() + 20
    while True:
        report = quick(ers, "GET", "/api/emergency/health?refresh=false", headers=ADMIN_HEADERS)
        check = dict(report.json()["checks"]["incidents"])
        if "when last read" in check["reason"] or time.monotonic() > deadline:
            return check
        time.sleep(0.2)


def quick(ers: ErsProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """The request, answered within QUICK_S or the test fails naming it."""
    try:
        return httpx.request(method, f"{ers.url}{path}", timeout=QUICK_S, **kwargs)
    except httpx.TimeoutException:
        raise AssertionError(
            f"{method} {path} did not answer within {QUICK_S:g} s while PostgreSQL was down: "
            "something waits for the database on the event loop"
        ) from None


def health_within_the_probes_wait(ers: ErsProcess) -> dict[str, Any]:
    """A full health report, which waits PROBE_WAIT_S for the stores and no longer (bounded:
    the wait plus QUICK_S, or the test fails naming it)."""
    path = "/api/emergency/health"
    try:
        got = httpx.get(f"{ers.url}{path}", timeout=PROBE_WAIT_S + QUICK_S, headers=ADMIN_HEADERS)
    except httpx.TimeoutException:
        raise AssertionError(f"GET {path} waited for the frozen database") from None
    assert got.status_code == 503, got.text
    return dict(got.json())


def stores_incidents(ers: ErsProcess) -> list[dict[str, Any]]:
    listed = httpx.get(
        f"{ers.url}/api/emergency/incidents", headers=ADMIN_HEADERS, timeout=10
    ).json()["incidents"]
    return [i for i in listed if i["spanName"] == "health.stores"]


def test_the_service_answers_while_postgres_is_down_and_recovers_when_it_is_back(
    tmp_path: Path, own_server: PostgresServer
) -> None:
    ers = start_with_an_incident(tmp_path / "ers", own_server.create_database())
    admin = ADMIN_HEADERS
    try:
        own_server.halt()
        results: list[tuple[str, int | str]] = []
        # A failing chat too: its incident's responder writes the timeline.
        failing_chat = ("POST", "/chat", {"message": "budget report", "userId": "u2"}, None)
        for attempt in range(3):
            send_in_background(ers, [*incident_calls(), failing_chat], results)
            assert quick(ers, "GET", "/livez").status_code == 200
            status = quick(ers, "GET", "/api/emergency/status", headers=admin)
            assert status.status_code == 200, status.text
            if attempt == 0:
                wait_until_stores_unhealthy(ers)
                counts = incidents_check_once_unread(ers)
                # What was last read, and that it is not current: not a healthy count.
                assert counts["status"] == "degraded", counts
                assert counts["reason"].startswith("1 active incidents when last read; "), counts
                assert "the incident store has not been readable for" in counts["reason"]
            # Chat's stores are down too, and known to be: a 503 that names the store at once.
            chat = quick(ers, "POST", "/chat", json={"message": "plan my meals", "userId": "u1"})
            assert chat.status_code == 503, chat.text
            assert chat.json()["error"] == "state store unavailable", chat.text
            assert chat.json()["component"] in STORES, chat.text
        # Those that needed the incident database were told so, within their bound.
        deadline = time.monotonic() + STORE_BOUND_S + 5
        while len(results) < 12 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(results) == 12, results
        incidents = [code for path, code in results if path == "/api/emergency/incidents"]
        assert incidents == [503, 503, 503], results
        alerts = [code for path, code in results if path == "/api/emergency/alerts"]
        assert alerts == [503, 503, 503], results  # Alertmanager retries a 5xx

        back_at = datetime.now(UTC)
        own_server.start()
        deadline = time.monotonic() + 30
        while True:
            listed = httpx.get(f"{ers.url}/api/emergency/incidents", headers=admin, timeout=10)
            if listed.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert listed.status_code == 200, listed.text
        assert any(i["component"] == "budget" for i in listed.json()["incidents"])
        # The outage itself is an incident once the incident store takes it again: the
        # health check's error spans were held meanwhile (they were lost, and no incident
        # told of the outage).
        while not (outage := stores_incidents(ers)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert outage, listed.json()
        began = datetime.fromisoformat(outage[0]["timestamp"].replace("Z", "+00:00"))
        assert began < back_at, (outage, back_at)  # when it happened, not when written
        # The component stores reopen once their check finds the server back (bounded).
        while True:
            ok = httpx.post(
                f"{ers.url}/chat", json={"message": "plan my meals", "userId": "u1"}, timeout=10
            )
            if ok.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert ok.status_code == 200, ok.text
        report = httpx.get(f"{ers.url}/api/emergency/health", headers=admin, timeout=10).json()
        counted = report["checks"]["incidents"]["reason"]
        assert counted.endswith(" active incidents") or "critical" in counted, report
        # Alertmanager retries a 5xx; the ledger's pool reconnects with a backoff of its own.
        deadline = time.monotonic() + 30
        while True:
            delivered = httpx.post(
                f"{ers.url}/api/emergency/alerts",
                json=alert("firing", "0utage0001"),
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=STORE_BOUND_S,
            )
            if delivered.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert delivered.status_code == 200, delivered.text
        assert delivered.json()["new"] == 1, delivered.text
    finally:
        ers.stop()
    # The outage is said in ERS's own lines, not buried under the pool's at every reconnect.
    assert "error connecting in" not in ers.log()


def test_a_frozen_postgres_holds_up_only_the_requests_that_need_it(
    tmp_path: Path, own_server: PostgresServer
) -> None:
    """Every process of the server stopped (SIGSTOP): connections stay open and statements
    never come back. The event loop must not be among those waiting."""
    ers = start_with_an_incident(tmp_path / "ers", own_server.create_database())
    try:
        results: list[tuple[str, int | str]] = []
        threads: list[threading.Thread] = []
        with frozen(own_server):
            for _ in range(3):
                threads += send_in_background(ers, incident_calls(), results)
                assert quick(ers, "GET", "/livez").status_code == 200
                status = quick(ers, "GET", "/api/emergency/status", headers=ADMIN_HEADERS)
                assert status.status_code == 200, status.text
            assert results == [], "answered from a frozen database"
        # The held requests go through once the server runs again.
        for thread in threads:
            thread.join(STORE_BOUND_S + 5)
        assert sorted(code for _, code in results) == [200] * 9, results
        assert incidents_of(ers, "budget")

        # Frozen again: health names the stores that do not answer, twice in a row, rather
        # than wait for them as long as psycopg waits for a statement it cancelled (10 s).
        # (Its probes find the server down, which cuts the wait of the requests above.)
        with frozen(own_server):
            for _ in range(2):
                report = health_within_the_probes_wait(ers)
                stores = report["checks"]["stores"]
                assert stores["status"] == "unhealthy", stores
                assert "no answer to its write probe" in stores["figures"]["budgets"], stores
    finally:
        ers.stop()


def test_a_store_failing_a_request_is_in_the_status_before_the_next_health_round(
    tmp_path: Path, own_server: PostgresServer
) -> None:
    """Checks run once an hour here: the chats that get the stores' 503 are what tells the
    status (its health and system state) that the stores are down, not the next round."""
    env = {"ERS_DATABASE_URL": own_server.create_database(), "ERS_HEALTH_CHECK_INTERVAL_S": "3600"}
    ers = start_ers(tmp_path / "ers", env=env)
    try:
        first = quick(ers, "GET", "/api/emergency/status").json()
        assert first["health"]["overall"] == "healthy", first
        own_server.halt()
        deadline = time.monotonic() + 30
        while True:
            # Until the stores are known to be down, a chat waits for a connection (bounded).
            chat = httpx.post(
                f"{ers.url}/chat",
                json={"message": "plan my meals", "userId": "u1"},
                timeout=STORE_BOUND_S,
            )
            assert chat.status_code == 503, chat.text
            status = quick(ers, "GET", "/api/emergency/status").json()
            if status["health"]["overall"] == "unhealthy" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert status["health"]["overall"] == "unhealthy", status
        assert status["systemState"] == "degraded", status
        assert status["stateReason"] == "failing subsystem: stores", status
    finally:
        ers.stop()


def test_a_frozen_postgres_isolates_no_agent_whose_read_it_holds(
    tmp_path: Path, own_server: PostgresServer
) -> None:
    """The budget agent reads its store on every call. With the server frozen, each call ran
    out of its time limit waiting for the database, and that was counted as the agent's
    timeout: its breaker opened and the responder isolated it, so once the database answered
    again budget questions still got the fallback. The wait is the store's failure: the chat
    is answered as any other request the store fails, and the agent counts nothing."""
    env = {
        "ERS_DATABASE_URL": own_server.create_database(),
        "ERS_ADMIN_TOKEN": ADMIN,
        "ERS_AGENT_TIMEOUT_S": "1",
    }
    ers = start_ers(tmp_path / "ers", env=env)
    try:
        first = httpx.post(f"{ers.url}/chat", json={"message": "budget report", "userId": "u1"})
        assert first.status_code == 200 and first.json()["agent"] == "budget", first.text
        replies: list[httpx.Response] = []
        with frozen(own_server):
            for n in range(6):
                chat = {"message": "budget report", "userId": f"frozen-{n}"}
                replies.append(httpx.post(f"{ers.url}/chat", json=chat, timeout=30))
        breakers = httpx.get(f"{ers.url}/api/emergency/circuit-breakers", timeout=10).json()
        after = httpx.post(
            f"{ers.url}/chat", json={"message": "budget report", "userId": "u1"}, timeout=10
        )
    finally:
        ers.stop()
    for reply in replies:
        assert reply.status_code == 503, reply.text
        assert reply.json()["components"] == ["budgets"], reply.text
    assert "budgets store is unavailable: no answer within the call's time limit" in ers.log()
    budget = breakers["breakers"]["budget"]
    assert budget["state"] == "closed" and budget["failureCount"] == 0, budget
    assert after.status_code == 200 and after.json()["emergency"] is False, after.text
