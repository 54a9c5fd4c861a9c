"""A real uvicorn process on a free loopback port, spoken to over HTTP."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import ErsProcess, free_port, start_ers


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


def test_a_sighup_stops_the_service_as_a_sigterm_does_and_says_why(
    ers_process: ErsProcess,
) -> None:
    """A terminal that closes, or an operator asking for a reload ERS cannot do: before, ers
    serve died of it at once, without its shutdown (the final backup, the telemetry flush)
    or a word in its log."""
    ers_process.process.send_signal(signal.SIGHUP)
    assert ers_process.process.wait(timeout=30) == 0, ers_process.log()[-2000:]
    log = ers_process.log()
    assert "SIGHUP: ERS stops as for SIGTERM" in log and "start it again" in log, log[-2000:]
    assert "Traceback" not in log


def cli_of(service: ErsProcess) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``ers <args> --url <the service>``, run as its own process."""

    def ers(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service.cli", *args, "--url", service.url],
            capture_output=True,
            text=True,
            timeout=60,
        )

    return ers


def test_breakers_cli_against_a_running_service(ers_process: ErsProcess) -> None:
    ers = cli_of(ers_process)
    listed = ers("breakers", "list")
    assert listed.returncode == 0, listed.stderr
    assert "budget" in listed.stdout and "total 4: 4 closed" in listed.stdout
    forced = ers("breakers", "force-open", "WPA", "--reason", "maintenance", "--ttl", "30")
    assert forced.returncode == 0, forced.stderr
    assert "forced open by admin:loopback for 30 s: maintenance" in forced.stdout
    as_json = json.loads(ers("breakers", "list", "--json").stdout)
    forcing = as_json["breakers"]["workout"]["forced"]
    assert as_json["breakers"]["workout"]["state"] == "forced_open"
    # The list says until when; show says who, why and what happened, oldest first.
    expires = forcing["expiresAt"].replace("T", " ").split(".")[0] + "Z"
    workout_row = next(r for r in ers("breakers", "list").stdout.splitlines() if "workout" in r)
    assert expires in workout_row and "admin:loopback: maintenance" in workout_row
    shown = ers("breakers", "show", "WPA")
    assert shown.returncode == 0, shown.stderr
    assert "breaker workout" in shown.stdout and f"until              {expires}" in shown.stdout
    assert "forced by          admin:loopback: maintenance" in shown.stdout
    event = next(r for r in shown.stdout.splitlines() if "forced open" in r and r[:1].isdigit())
    assert "closed" in event and "admin:loopback" in event and "maintenance" in event
    assert ers("breakers", "show", "nope").returncode == 4
    # While the agent still fails its probe, a reset without force is refused.
    httpx.post(
        f"{ers_process.url}/api/emergency/simulate-error",
        json={"component": "workout", "errorType": "network"},
        timeout=10,
    ).raise_for_status()
    refused = ers("breakers", "reset", "workout")
    assert refused.returncode == 4  # refused by the service (4xx)
    assert "409" in refused.stderr and "health probe still fails" in refused.stderr
    assert ers("breakers", "reset", "workout", "--force").returncode == 0
    unknown = ers("breakers", "reset", "nope")
    assert unknown.returncode == 4 and "no agent named 'nope'" in unknown.stderr


def test_status_counts_a_disabled_breaker(ers_process: ErsProcess) -> None:
    ers = cli_of(ers_process)
    assert ers("breakers", "disable", "budget").returncode == 0
    assert ers("breakers", "force-open", "workout", "--reason", "bad plans").returncode == 0
    shown = ers("status")
    assert shown.returncode == 0, shown.stderr
    # Every breaker is in one count: 2 + 1 + 0 + 1 = 4.
    assert "4: 2 closed, 1 open, 0 half-open, 1 disabled" in shown.stdout
    as_json = json.loads(ers("status", "-o", "json").stdout)["circuitBreakers"]
    assert as_json["disabled"] == 1
    assert sum(as_json[k] for k in ("closed", "open", "halfOpen", "disabled")) == 4


def test_chats_keep_answering_when_the_collector_is_down(tmp_path: Path) -> None:
    closed_port = free_port()  # nothing listens there
    ers = start_ers(
        tmp_path, env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port}"}
    )
    try:
        with httpx.Client(base_url=ers.url, timeout=10) as http:
            for _ in range(20):
                reply = http.post("/chat", json={"message": "plan my meals"})
                assert reply.status_code == 200 and reply.json()["emergency"] is False
    finally:
        started = time.monotonic()
        assert ers.stop() == 0
        assert time.monotonic() - started < 20  # the final flush gives up, it does not hang
