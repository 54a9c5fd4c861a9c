"""A chat flood against a real uvicorn process whose line is kept short: chats that cannot
start are answered 503 with Retry-After and a message; every chat answered 200 is stored,
none turned away is; the shed chats are counted; and the operator's status request, sent
in the middle of a burst, is never turned away."""

from __future__ import annotations

import http.client
import json
import re
import socket
import sqlite3
from pathlib import Path

import httpx

from bench.loadgen import build_post
from tests.conftest import start_ers

CONNECTIONS = 32
MAX_BURSTS = 20


def _send_burst(host: str, port: int, burst: int) -> list[tuple[str, int, dict[str, str], bytes]]:
    """Open the connections first, then write one request on each as fast as possible, so
    that many reach the server in the same turn of its loop; a status request goes in the
    middle. Returns (what was sent, status, headers, body) in order."""
    sockets = [socket.create_connection((host, port), timeout=10) for _ in range(CONNECTIONS)]
    try:
        sent = []
        for i, sock in enumerate(sockets):
            if i == CONNECTIONS // 2:
                sock.sendall(f"GET /api/emergency/status HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                sent.append("status")
            else:
                message = f"budget report {burst}-{i}"
                sock.sendall(build_post(host, "/chat", {"message": message, "userId": "flood"}))
                sent.append(message)
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
        assert "chats are already waiting" in reply["detail"]
        assert "retry in a second" in reply["detail"]

        with httpx.Client(base_url=ers.url, timeout=10) as http_client:
            metrics = http_client.get("/metrics").text
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
