"""Chat floods against a real uvicorn process. With a line kept short, chats that cannot
start are answered 503 with Retry-After and a message; every chat answered 200 is stored,
none turned away is; the shed chats are counted; and the operator's status request, sent in
the middle of a burst, is never turned away. With a long line, that status request is
answered ahead of the chats waiting in it."""

from __future__ import annotations

import http.client
import json
import re
import selectors
import socket
import sqlite3
import time
from pathlib import Path

import httpx

from bench.loadgen import build_post
from tests.conftest import start_ers

CONNECTIONS = 32
MAX_BURSTS = 40


def _send_burst(host: str, port: int, burst: int) -> list[tuple[str, int, dict[str, str], bytes]]:
    """Open the connections first, then write one request on each as fast as possible, so
    that many reach the server in the same turn of its loop; a status request goes in the
    middle. Returns (what was sent, status, headers, body) in order."""
    # Every request is built before the first is sent: the writes then follow each other
    # with nothing in between.
    sent, requests = [], []
    for i in range(CONNECTIONS):
        if i == CONNECTIONS // 2:
            sent.append("status")
            requests.append(f"GET /api/emergency/status HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        else:
            sent.append(f"budget report {burst}-{i}")
            requests.append(build_post(host, "/chat", {"message": sent[-1], "userId": "flood"}))
    sockets = [socket.create_connection((host, port), timeout=10) for _ in range(CONNECTIONS)]
    try:
        for sock, request in zip(sockets, requests, strict=True):
            sock.sendall(request)
        replies = []
        for what, sock in zip(sent, sockets, strict=True):
            reply = http.client.HTTPResponse(sock)
            reply.begin()
            headers = {name.lower(): value for name, value in reply.getheaders()}
            replies.append((what, reply.status, headers, reply.read()))
        return replies
    finally:
        for sock in sockets:
            sock.close()


def _metric(text: str, name: str, outcome: str) -> float:
    pattern = rf'^{name}\{{[^}}]*outcome="{outcome}"[^}}]*\}} ([0-9.e+]+)$'
    return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.MULTILINE))


def test_a_chat_flood_is_shed_with_503_and_nothing_answered_is_lost(tmp_path: Path) -> None:
    ers = start_ers(tmp_path, env={"ERS_CHAT_STARTS_PER_TURN": "1", "ERS_CHAT_QUEUE_LIMIT": "0"})
    try:
        host, port = "127.0.0.1", int(ers.url.rsplit(":", 1)[1])
        answered: list[str] = []
        shed: list[tuple[dict[str, str], bytes]] = []
        status_codes: list[int] = []
        for burst in range(MAX_BURSTS):
            for sent, status, headers, body in _send_burst(host, port, burst):
                if sent == "status":
                    status_codes.append(status)
                elif status == 200:
                    answered.append(sent)
                else:
                    assert status == 503, (status, body)
                    shed.append((headers, body))
            if shed:
                break

        assert shed, f"{MAX_BURSTS} bursts of {CONNECTIONS} chats and none was turned away"
        assert answered, "every chat of every burst was turned away"
        assert set(status_codes) == {200}
        headers, body = shed[0]
        assert headers.get("retry-after") == "1"
        reply = json.loads(body)
        assert reply["error"] == "overloaded"
        assert "at capacity (no chat may wait)" in reply["detail"]
        assert "retry in a second" in reply["detail"]

        with httpx.Client(base_url=ers.url, timeout=10) as http_client:
            metrics = http_client.get("/metrics").text
            # Shedding is counted, not an incident (before: "ers:system:503:", no message).
            time.sleep(1.0)  # the error spans' pipeline writes within its linger
            incidents = http_client.get("/api/emergency/incidents").json()["incidents"]
        assert incidents == [], [(i["spanName"], i["message"]) for i in incidents]
        assert _metric(metrics, "ers_chat_requests_total", "shed") == len(shed)
        served = _metric(metrics, "ers_chat_requests_total", "ok") + _metric(
            metrics, "ers_chat_requests_total", "degraded"
        )
        assert served == len(answered)

        db = sqlite3.connect(tmp_path / "data" / "conversations.sqlite3")
        stored = [row[0] for row in db.execute("SELECT message FROM turns WHERE user_id='flood'")]
        db.close()
        assert sorted(stored) == sorted(answered)
    finally:
        assert ers.stop() == 0


def test_a_status_request_in_a_flood_is_answered_ahead_of_the_waiting_chats(
    tmp_path: Path,
) -> None:
    """Without admission the loop runs every chat that reached it before the status request;
    with one chat let in per turn, the status request waits a turn or two. Counted: chat
    replies that came after the status request was sent and before its reply."""
    ers = start_ers(tmp_path, env={"ERS_CHAT_STARTS_PER_TURN": "1"})
    try:
        host, port = "127.0.0.1", int(ers.url.rsplit(":", 1)[1])
        sockets = [socket.create_connection((host, port), timeout=10) for _ in range(CONNECTIONS)]
        for sock in sockets:
            # A round trip each first: a busy server accepts new connections a few at a
            # time, and this test is about requests on connections it is already reading.
            sock.sendall(f"GET /livez HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            reply = http.client.HTTPResponse(sock)
            reply.begin()
            reply.read()
            assert reply.status == 200
        status_at = CONNECTIONS // 2
        answered = 0
        chats_before_status: int | None = None
        with selectors.DefaultSelector() as selector:
            for i, sock in enumerate(sockets):
                selector.register(sock, selectors.EVENT_READ, i)

            def collect(timeout: float) -> int:
                """Read the replies ready now; returns how many chat replies were answered
                before this call (ones found ready together came in no known order)."""
                nonlocal answered, chats_before_status
                earlier = answered
                for key, _ in selector.select(timeout=timeout):
                    reply = http.client.HTTPResponse(key.fileobj)  # type: ignore[arg-type]
                    reply.begin()
                    reply.read()
                    assert reply.status == 200, (key.data, reply.status)
                    selector.unregister(key.fileobj)
                    if key.data == status_at:
                        chats_before_status = earlier
                    answered += 1
                return earlier

            try:
                for i, sock in enumerate(sockets):
                    if i == status_at:
                        collect(0)  # answered before the status request was even sent
                        sent_at = answered
                        request = f"GET /api/emergency/status HTTP/1.1\r\nHost: {host}\r\n\r\n"
                        sock.sendall(request.encode())
                    else:
                        body = {"message": f"budget report {i}", "userId": "flood"}
                        sock.sendall(build_post(host, "/chat", body))
                while answered < CONNECTIONS:
                    before = answered
                    collect(10)
                    assert answered > before, "no reply within 10 s"
            finally:
                for sock in sockets:
                    sock.close()
        assert chats_before_status is not None
        overtaking = chats_before_status - sent_at
        assert overtaking <= CONNECTIONS // 4, (
            f"{overtaking} chats were answered after the status request was sent and before "
            "its reply"
        )
    finally:
        assert ers.stop() == 0
