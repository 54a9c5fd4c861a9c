"""A resolution ERS had taken but not finished acting on when it was killed (``kill -9``) is
acted on at the next start: Alertmanager sends a delivered resolution only once, so without
that the agent would stay isolated by the alert until the isolation's time ran out."""

from __future__ import annotations

import copy
import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ErsProcess, start_ers
from tests.e2e.test_fleet_overrides import TOKEN, alert_payload

ENV = {"ERS_ALERT_TOKEN": TOKEN, "ERS_AUTO_RESPONSE_ENABLED": "false"}
ATTEMPTS = 8  # kills until one lands while the resolution is being acted on


def deliver(ers: ErsProcess, payload: dict[str, Any]) -> None:
    sent = httpx.post(
        f"{ers.url}/api/emergency/alerts",
        json=payload,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert sent.status_code == 200 and sent.json()["new"] == 1, sent.text


def workout(ers: ErsProcess) -> dict[str, Any]:
    return dict(httpx.get(f"{ers.url}/api/emergency/circuit-breakers/workout", timeout=10).json())


def outcome(workdir: Path, fingerprint: str, status: str) -> str | None:
    with sqlite3.connect(workdir / "data" / "incidents.sqlite3", timeout=5) as db:
        row = db.execute(
            "SELECT outcome FROM alert_ledger WHERE fingerprint = ? AND status = ?",
            (fingerprint, status),
        ).fetchone()
    assert row is not None, f"{status} of {fingerprint} not in the ledger"
    return str(row[0]) if row[0] is not None else None


def held_by_alertmanager(workdir: Path) -> bool:
    """Whether the stored isolation of the workout breaker is still the alert's."""
    with sqlite3.connect(workdir / "data" / "system_state.sqlite3", timeout=5) as db:
        row = db.execute("SELECT value FROM state WHERE key = 'breaker:workout'").fetchone()
    return row is not None and json.loads(row[0]).get("source") == "alertmanager"


def payload(status: str, number: int) -> dict[str, Any]:
    """The same alert as ``alert_payload``, one firing episode per ``number``."""
    body = copy.deepcopy(alert_payload(status))
    body["alerts"][0]["fingerprint"] = f"5e0f1c9a2b3d{number:04x}"
    body["alerts"][0]["startsAt"] = f"2026-11-28T12:{number:02d}:00.000Z"
    return body


def test_a_resolution_cut_off_by_a_kill_is_acted_on_at_the_next_start(tmp_path: Path) -> None:
    workdir = tmp_path / "ers"
    fingerprint = ""
    for number in range(ATTEMPTS):
        ers = start_ers(workdir, env=ENV)
        # A resolution the last kill cut off after its release is acted on first ("not held").
        deadline = time.monotonic() + 10
        while fingerprint and outcome(workdir, fingerprint, "resolved") is None:
            assert time.monotonic() < deadline, "the cut-off resolution was never acted on"
            time.sleep(0.05)
        fingerprint = payload("firing", number)["alerts"][0]["fingerprint"]
        try:
            deliver(ers, payload("firing", number))
            deadline = time.monotonic() + 10
            while outcome(workdir, fingerprint, "firing") is None:
                assert time.monotonic() < deadline, "the firing was never acted on"
                time.sleep(0.05)
            assert workout(ers)["forced"]["source"] == "alertmanager"
            deliver(ers, payload("resolved", number))
        finally:
            ers.stop(signal.SIGKILL)
        # Killed while acting on it, before the release was stored. (Killed after, the next
        # start finds the breaker released and says "not forced open; nothing to release".)
        if outcome(workdir, fingerprint, "resolved") is None and held_by_alertmanager(workdir):
            break
    else:
        raise AssertionError(f"none of {ATTEMPTS} kills landed while a resolution was acted on")

    again = start_ers(workdir, env=ENV)
    try:
        deadline = time.monotonic() + 20
        while outcome(workdir, fingerprint, "resolved") is None:
            assert time.monotonic() < deadline, "the cut-off resolution was never acted on"
            time.sleep(0.1)
        done = outcome(workdir, fingerprint, "resolved")
        assert done is not None and "released" in done, done
        breaker = workout(again)
        assert breaker["forced"] is None and breaker["state"] in ("half_open", "closed")
        assert "resolved while ERS stopped before it finished acting on it" in again.log()
        incidents = httpx.get(
            f"{again.url}/api/emergency/incidents", params={"component": "workout"}, timeout=10
        ).json()["incidents"]
        assert incidents and incidents[0]["status"] in ("mitigated", "resolved"), incidents
    finally:
        again.stop()
    assert "Traceback" not in again.log(), again.log()[-3000:]
