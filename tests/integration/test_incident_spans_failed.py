"""An error span the incident store refuses is counted where an operator sees it: the
service's ``ers_incident_spans_failed_total`` on ``/metrics`` (on the incidents dashboard
as "not written"), and the pipeline writes the next ones once the store takes them again."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx

from tests.conftest import fail_the_budget_agent_once, start_ers

POLLS = 100  # every 0.1 s: 10 s at most


def spans_failed(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("ers_incident_spans_failed_total"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("/metrics has no ers_incident_spans_failed_total")


def budget_incidents(http: httpx.Client) -> list[dict[str, object]]:
    listing = http.get("/api/emergency/incidents", params={"component": "budget"})
    listing.raise_for_status()
    return listing.json()["incidents"]


def test_error_spans_the_store_refuses_are_counted_and_later_ones_written(
    tmp_path: Path,
) -> None:
    ers = start_ers(tmp_path)
    try:
        with httpx.Client(base_url=ers.url, timeout=10) as http:
            assert spans_failed(http) == 0
            # A real SQLite error on the store's own write, as a full disk would give.
            database = sqlite3.connect(tmp_path / "data" / "incidents.sqlite3", timeout=10)
            database.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON incidents "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
            database.commit()
            fail_the_budget_agent_once(http)
            for _ in range(POLLS):
                if spans_failed(http) >= 1:
                    break
                time.sleep(0.1)
            assert spans_failed(http) >= 1
            assert budget_incidents(http) == []

            database.execute("DROP TRIGGER refuse")
            database.commit()
            database.close()
            fail_the_budget_agent_once(http)
            for _ in range(POLLS):
                if budget_incidents(http):
                    break
                time.sleep(0.1)
            assert len(budget_incidents(http)) == 1
        assert "could not write 1 error spans to the incident store" in ers.log()
    finally:
        ers.stop()
