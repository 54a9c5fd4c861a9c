"""The fleet as compose runs it: two real ERS replicas on one PostgreSQL behind the real load
balancer (Debian's nginx with compose/lb/nginx.conf, see tests/balancer.py). The README
promises that chats and alerts keep arriving while one replica is down, and that replicas
failing together still give ERS's own answers; these tests send the requests through nginx
and look at what each replica saw."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.cli.remote import WORK_TIMEOUT_S
from tests.balancer import Balancer, start_balancer
from tests.conftest import ErsProcess, start_ers
from tests.e2e.test_database_outage import alert
from tests.pg import PostgresServer
from tests.processes import free_port, slow_restic

TOKEN = "lb-alert-token-61c0"
ADMIN = "lb-admin-token-0d7e"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
ALERT_HEADERS = {"Authorization": f"Bearer {TOKEN}"}


class Fleet:
    """Replicas ``ers`` and ``ers-2`` (compose's names) on ``database_url``, and nginx."""

    def __init__(self, workdir: Path, database_url: str) -> None:
        self.workdir = workdir
        self.env = {
            "ERS_DATABASE_URL": database_url,
            "ERS_ALERT_TOKEN": TOKEN,
            "ERS_ADMIN_TOKEN": ADMIN,
        }
        self.ports = {"ers": free_port(), "ers-2": free_port()}
        self.replicas: dict[str, ErsProcess] = {}
        self.balancer: Balancer | None = None
        try:
            for name in self.ports:
                self.start(name)
            self.balancer = start_balancer(workdir / "lb", self.ports)
        except BaseException:
            self.stop()
            raise

    def start(self, name: str) -> ErsProcess:
        replica = start_ers(self.workdir / name, env=self.env, port=self.ports[name])
        self.replicas[name] = replica
        return replica

    @property
    def lb(self) -> httpx.Client:
        assert self.balancer is not None
        return httpx.Client(base_url=self.balancer.url, timeout=30)

    def chats_served(self, name: str) -> float:
        """Chats replica ``name`` answered, whatever their outcome, from its own /metrics."""
        text = httpx.get(f"{self.replicas[name].url}/metrics", timeout=10).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "ers_chat_requests"
            for sample in family.samples
            if sample.name == "ers_chat_requests_total"
        )

    def dump(self) -> str:
        logs = [f"--- {name}\n{replica.log()[-3000:]}" for name, replica in self.replicas.items()]
        if self.balancer is not None:
            logs.append(f"--- nginx\n{self.balancer.log()[-3000:]}")
        return "\n".join(logs)

    def stop(self) -> None:
        if self.balancer is not None:
            self.balancer.stop()
        for replica in self.replicas.values():
            replica.stop()


@pytest.fixture
def fleet(tmp_path: Path, pg_url: str) -> Iterator[Fleet]:
    started = Fleet(tmp_path, pg_url)
    try:
        yield started
    finally:
        started.stop()


def chat(http: httpx.Client, n: int) -> httpx.Response:
    return http.post("/chat", json={"message": "plan my meals", "userId": f"lb-{n}"})


def test_chats_and_alerts_keep_arriving_while_a_replica_is_killed(fleet: Fleet) -> None:
    with fleet.lb as http:
        answered = [chat(http, n) for n in range(12)]
        assert [r.status_code for r in answered] == [200] * 12, fleet.dump()
        # Round robin: both replicas took chats.
        before = {name: fleet.chats_served(name) for name in fleet.replicas}
        assert all(count > 0 for count in before.values()), before
        assert sum(before.values()) == 12, before
        # Each replica has its own metrics: Prometheus scrapes them, not the balancer.
        assert http.get("/metrics").status_code == 404
        # nginx refuses a body over ERS's own limit before it reaches a replica; one under it
        # that nginx buffers to a file on its way reaches ERS, which answers for itself.
        assert http.post("/chat", content=b"x" * (1024 * 1024 + 1)).status_code == 413
        long = http.post("/chat", json={"message": "x" * 200_000, "userId": "lb-long"})
        assert long.status_code == 422 and "message" in long.text, long.text

        assert fleet.replicas["ers"].stop(signal.SIGKILL) == -signal.SIGKILL
        # A refused connection never reached the replica: nginx sends the chat, a POST, to
        # the other one, and so every chat is answered.
        after = [chat(http, n) for n in range(12, 24)]
        assert [r.status_code for r in after] == [200] * 12, fleet.dump()
        assert fleet.chats_served("ers-2") == before["ers-2"] + 12
        assert http.get("/api/emergency/status").status_code == 200

        # An alert reaches the fleet through the balancer and lands on an incident.
        firing = http.post(
            "/api/emergency/alerts", json=alert("firing", "1b0000000001"), headers=ALERT_HEADERS
        )
        assert firing.status_code == 200, firing.text
        # The ledger keeps the delivery before the reply; the incident follows it.
        deadline = time.monotonic() + 10
        while True:
            listed = http.get(
                "/api/emergency/incidents", params={"component": "workout"}, headers=ADMIN_HEADERS
            ).json()
            if listed["incidents"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert listed["total"] == 1 and listed["incidents"][0]["status"] != "resolved", listed

        # The killed replica comes back on its port and takes chats again once nginx's
        # 5 s without it are over (bounded: 40 chats, 20 s at most).
        fleet.start("ers")
        back = fleet.chats_served("ers")
        deadline = time.monotonic() + 20
        n = 24
        while fleet.chats_served("ers") == back and time.monotonic() < deadline and n < 64:
            assert chat(http, n).status_code == 200
            n += 1
            time.sleep(0.5)
        assert fleet.chats_served("ers") > back, fleet.dump()


def test_replicas_failing_together_still_give_ers_own_answers(
    tmp_path: Path, own_server: PostgresServer
) -> None:
    """With the database down, both replicas answer 503 for what needs it; nginx counts
    those as failures and, past three each, takes both out. Its backup servers (the same
    replicas, never taken out) then carry the requests: the client gets ERS's 503 naming the
    store, never nginx's "no live upstreams" 502 page, and requests that need no database
    still get their answers."""
    fleet = Fleet(tmp_path, own_server.create_database())
    try:
        with fleet.lb as http:
            ready = http.get("/api/profiles/lb-user", headers=ADMIN_HEADERS)
            assert ready.status_code == 404, ready.text  # no such profile: the store answers
            own_server.halt()
            # Each request fails on both replicas (two tries): past the third, both are out
            # of the upstream, and the rest go to the backup servers.
            # (Without the backup servers, the sixth on were nginx's 502 page.)
            replies = [http.get("/api/profiles/lb-user", headers=ADMIN_HEADERS) for _ in range(8)]
            status = http.get("/api/emergency/status")
            live = http.get("/livez")
    finally:
        fleet.stop()
    for reply in replies:
        assert reply.status_code == 503, (reply.status_code, reply.text)
        body: dict[str, Any] = reply.json()  # ERS's JSON, not nginx's HTML page
        assert body["component"] == "profiles", body
    assert status.status_code == 200, status.text
    assert live.status_code == 200


def test_long_work_through_the_balancer_is_waited_for_as_long_as_ers_cli_waits(
    tmp_path: Path,
) -> None:
    """Backups, test rollbacks, rollbacks and restic's check and prune answer once the work is
    done, and `ers` waits up to WORK_TIMEOUT_S for them. Before, nginx gave every request
    30 s (proxy_read_timeout): `ers --url http://127.0.0.1:8080 backup check` on a
    repository whose check took longer got nginx's 504 page while the check went on."""
    slow_s = 35  # over the 30 s nginx gives any other request
    env = {
        "ERS_BACKUPS_ENABLED": "true",
        "ERS_BACKUP_SCHEDULE_ENABLED": "false",
        "ERS_RESTIC_BINARY": str(slow_restic(tmp_path, command="check", seconds=slow_s)),
    }
    port = free_port()
    replica = start_ers(tmp_path / "ers", env=env, port=port)
    balancer: Balancer | None = None
    try:
        replica.wait_for_backups()
        # Both of compose's names on the one replica: only the wait is under test.
        balancer = start_balancer(tmp_path / "lb", {"ers": port, "ers-2": port})
        with httpx.Client(base_url=balancer.url, timeout=WORK_TIMEOUT_S) as http:
            checked = http.post("/api/emergency/backups/check")
            # The routes beside them keep working as before (the list is no redirect).
            listed = http.get("/api/emergency/backups")
            assert listed.status_code == 200 and "backups" in listed.json(), listed.text
        assert checked.status_code == 200, (checked.status_code, checked.text[:300])
        assert checked.headers["content-type"].startswith("application/json")
    finally:
        if balancer is not None:
            balancer.stop()
        replica.stop()
