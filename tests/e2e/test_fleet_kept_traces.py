"""Two real ERS replicas on one PostgreSQL database: the trace of a chat that failed on one
replica, linked from its incident, answers on the other too (a load balancer sends the
link to either), and still answers after the first replica restarts. While the database is
down, a trace the replica holds still answers, and one it must read answers 503 naming the
store; while it is frozen (stopped, its connections open), a held trace answers without
waiting for it."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ErsProcess, start_ers
from tests.e2e.test_database_outage import frozen
from tests.pg import PostgresServer

DEADLINE_S = 15.0
# A held trace answers within this while the database is frozen: the archive's wait (1 s)
# and the request's own time, far below a wait for the frozen server (until it runs again).
HELD_ANSWER_S = 5.0


def failed_chat(replica: ErsProcess) -> str:
    """A budget chat that fails on ``replica`` by its own fault injection; its trace id."""
    fault = {"component": "budget", "errorType": "database"}
    injected = httpx.post(f"{replica.url}/api/emergency/simulate-error", json=fault, timeout=5)
    assert injected.status_code == 200, injected.text
    chat = httpx.post(
        f"{replica.url}/chat", json={"message": "budget report", "userId": "u1"}, timeout=10
    )
    assert chat.status_code == 200 and chat.json()["success"] is False, chat.text
    httpx.delete(f"{replica.url}/api/emergency/simulate-error", timeout=5).raise_for_status()
    return str(chat.json()["traceId"])


def trace_link(replica: ErsProcess, trace_id: str) -> str:
    """The API link of ``trace_id`` in the budget incident, as ``replica`` lists it."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        found = httpx.get(
            f"{replica.url}/api/emergency/incidents", params={"component": "budget"}, timeout=5
        ).json()["incidents"]
        links = [t["api"] for i in found for t in i["traces"] if t["traceId"] == trace_id]
        if links:
            return str(links[0])
        assert time.monotonic() < deadline, f"no incident links trace {trace_id}: {found}"
        time.sleep(0.1)


def kept_trace(replica: ErsProcess, link: str) -> dict[str, Any]:
    """The trace at ``link`` on ``replica``; polled while it answers 404, since the replica
    that kept it writes it to the archive within a second of its incident naming it."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        reply = httpx.get(f"{replica.url}{link}", timeout=10)
        if reply.status_code == 200:
            return dict(reply.json())
        assert reply.status_code == 404, reply.text
        assert time.monotonic() < deadline, f"{link} on {replica.url}: {reply.text}"
        time.sleep(0.1)


def test_a_failed_chats_trace_answers_on_the_other_replica_and_after_a_restart(
    tmp_path: Path, pg_url: str
) -> None:
    env = {"ERS_DATABASE_URL": pg_url, "ERS_AUTO_RESPONSE_ENABLED": "false"}
    replicas: list[ErsProcess] = []
    try:
        replicas.append(start_ers(tmp_path / "a", env=env))
        replicas.append(start_ers(tmp_path / "b", env=env))
        a, b = replicas
        trace_id = failed_chat(a)
        link = trace_link(b, trace_id)

        on_b = kept_trace(b, link)
        assert on_b["traceId"] == trace_id and on_b["errorSpans"] >= 1, on_b
        assert kept_trace(a, link) == on_b

        # a goes away and comes back with an empty memory: both read the fleet's archive.
        assert a.stop() == 0, a.log()[-3000:]
        assert kept_trace(b, link) == on_b
        replicas[0] = a = start_ers(tmp_path / "a", env=env)
        assert kept_trace(a, link) == on_b
    finally:
        for replica in replicas:
            replica.stop()
    for replica in replicas:
        assert "Traceback" not in replica.log(), replica.log()[-3000:]


def test_while_postgres_is_down_a_held_trace_answers_and_another_is_a_503_naming_the_store(
    tmp_path: Path, own_server: PostgresServer
) -> None:
    env = {"ERS_DATABASE_URL": own_server.create_database(), "ERS_AUTO_RESPONSE_ENABLED": "false"}
    ers = start_ers(tmp_path / "a", env=env)
    try:
        trace_id = failed_chat(ers)
        link = trace_link(ers, trace_id)
        held = kept_trace(ers, link)
        own_server.halt()

        assert httpx.get(f"{ers.url}{link}", timeout=10).json() == held
        other = httpx.get(f"{ers.url}/api/emergency/traces/{secrets.token_hex(16)}", timeout=10)
        assert other.status_code == 503, other.text
        assert other.json()["component"] == "kept_traces", other.text
        assert httpx.get(f"{ers.url}/livez", timeout=2).status_code == 200

        own_server.start()
        deadline = time.monotonic() + 30  # the pool reconnects by itself
        while other.status_code == 503:
            assert time.monotonic() < deadline, other.text
            time.sleep(0.2)
            other = httpx.get(f"{ers.url}/api/emergency/traces/{secrets.token_hex(16)}")
        assert other.status_code == 404, other.text
    finally:
        ers.stop()


def test_while_postgres_is_frozen_a_held_trace_answers_from_memory_saying_so(
    tmp_path: Path, own_server: PostgresServer
) -> None:
    env = {"ERS_DATABASE_URL": own_server.create_database(), "ERS_AUTO_RESPONSE_ENABLED": "false"}
    ers = start_ers(tmp_path / "a", env=env)
    try:
        trace_id = failed_chat(ers)
        link = trace_link(ers, trace_id)
        held = kept_trace(ers, link)
        with frozen(own_server):
            for _ in range(3):  # and the reads still waiting for the server do not pile up
                try:
                    reply = httpx.get(f"{ers.url}{link}", timeout=HELD_ANSWER_S)
                except httpx.TimeoutException:
                    raise AssertionError(f"{link} waited for the frozen database") from None
                assert reply.status_code == 200, reply.text
                assert reply.json() == held
                unread = reply.headers.get("ERS-Archive-Not-Read", "")
                assert "the archive did not answer within 1 s" in unread or (
                    "earlier reads of the archive have not answered" in unread
                ), reply.headers
        deadline = time.monotonic() + 30  # the frozen reads finish, then the archive is read
        while "ERS-Archive-Not-Read" in reply.headers:
            assert time.monotonic() < deadline, reply.headers
            time.sleep(0.2)
            reply = httpx.get(f"{ers.url}{link}", timeout=10)
        assert reply.status_code == 200 and reply.json() == held, reply.text
    finally:
        ers.stop()
