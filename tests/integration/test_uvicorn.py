"""A real uvicorn process on a free loopback port, spoken to over HTTP."""

from __future__ import annotations

import re
import signal
import sqlite3

import httpx

from tests.conftest import ErsProcess


def test_chats_over_http_show_up_in_metrics_and_the_store(ers_process: ErsProcess) -> None:
    messages = ["plan my meals", "make me a workout plan", "set my food budget to $400", "hi"]
    with httpx.Client(base_url=ers_process.url, timeout=10) as http:
        for message in messages:
            reply = http.post("/chat", json={"message": message, "userId": "u1"})
            assert reply.status_code == 200, reply.text
        metrics = http.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    calls = {
        (m.group(1), m.group(2)): float(m.group(3))
        for m in re.finditer(
            r'^ers_agent_calls_total\{agent="(\w+)",outcome="(\w+)"\} ([\d.]+)$',
            metrics.text,
            re.MULTILINE,
        )
    }
    assert calls[("router", "success")] == 4
    assert calls[("nutrition", "success")] == 1
    assert calls[("budget", "success")] == 1
    # Every acknowledged turn is in the conversations file, read by another connection.
    db = ers_process.log_path.parent / "data" / "conversations.sqlite3"
    stored = sqlite3.connect(db).execute("SELECT message FROM turns ORDER BY id").fetchall()
    assert [row[0] for row in stored] == messages


def test_acknowledged_turns_survive_kill_9(ers_process: ErsProcess) -> None:
    with httpx.Client(base_url=ers_process.url, timeout=10) as http:
        for i in range(20):
            assert http.post("/chat", json={"message": f"budget report {i}"}).status_code == 200
    ers_process.stop(signal.SIGKILL)
    db = ers_process.log_path.parent / "data" / "conversations.sqlite3"
    count = sqlite3.connect(db).execute("SELECT count(*) FROM turns").fetchone()[0]
    assert count == 20


def test_sigterm_exits_cleanly(ers_process: ErsProcess) -> None:
    assert ers_process.stop(signal.SIGTERM) == 0
    assert "Traceback" not in ers_process.log()
