"""The shipped alert rules in real Prometheus across a `kill -9` and restart of ERS: an open
breaker and an open critical incident outlive the process, so the alerts about them keep
their clocks. Judged by the instant gauges, the failed scrapes marked every series stale:
CriticalIncidentActive resolved and fired again (with its backup), and the 30 minutes of
CriticalIncidentUnresolved and the 10 of CircuitBreakerOpenTooLong began again, so an ERS
restarted more often than that never asked for its rollback."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from tests.conftest import start_ers
from tests.integration.prom import PromProcess, start_prometheus

ROOT = Path(__file__).resolve().parents[2]
WATCHED = ("CriticalIncidentActive", "CriticalIncidentUnresolved", "CircuitBreakerOpenTooLong")


def watched(prom: PromProcess) -> dict[str, tuple[str, str]]:
    """Each watched alert's (state, activeAt) as Prometheus holds it."""
    return {
        a["labels"]["alertname"]: (a["state"], a["activeAt"])
        for a in prom.alerts()
        if a["labels"]["alertname"] in WATCHED
    }


def test_a_restart_of_ers_keeps_the_clocks_of_the_alerts_on_what_outlives_it(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "ers"
    ers = start_ers(workdir)
    port = int(ers.url.rsplit(":", 1)[1])
    prom = start_prometheus(tmp_path / "prom", [ers.url], [ROOT / "alerts/rules.yml"])
    try:
        with httpx.Client(base_url=ers.url, timeout=30) as http:
            forced = http.post(
                "/api/emergency/circuit-breaker/budget/force-open",
                json={"reason": "kept out while its store is looked at", "ttlSeconds": 3600},
            )
            assert forced.status_code == 200, forced.text
            # A real failure the rules classify as critical (an exception called fatal).
            fault = {"component": "workout", "errorType": "agent", "message": "fatal: disk gone"}
            assert http.post("/api/emergency/simulate-error", json=fault).status_code == 200
            assert http.post("/chat", json={"message": "make me a workout plan"}).status_code == 200
        before = prom.wait_for(lambda: len(found := watched(prom)) == 3 and found, timeout=30)
        assert before["CriticalIncidentActive"][0] == "firing", before
        assert before["CriticalIncidentUnresolved"][0] == "pending", before

        ers.stop(signal.SIGKILL)
        prom.wait_for(lambda: prom.query('up{job="ers"} == 0'), timeout=30)
        time.sleep(2)  # more scrapes fail meanwhile; each evaluation sees no sample
        ers = start_ers(workdir, port=port)
        prom.wait_for(lambda: prom.query('up{job="ers"} == 1'), timeout=30)
        prom.wait_for(lambda: prom.query("ers_incidents_active"), timeout=30)
        time.sleep(2)  # two evaluations with the series back
        after = watched(prom)
    finally:
        prom.stop()
        assert ers.stop() == 0, ers.log()[-3000:]
    assert after == before
