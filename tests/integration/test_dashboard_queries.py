"""Every dashboard panel shows data: real Prometheus scrapes a running ERS under a faulty
workload, with the alert and recording rules loaded, and each dashboard query goes through
its HTTP API as Grafana would send it."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from grafana.build import dashboards
from tests.conftest import free_port, start_ers
from tests.grafana.queries import dashboard_queries
from tests.integration.prom import PromProcess, start_prometheus
from tests.integration.test_metric_names import BACKUPS_ON, RULES, run_faulty_workload

pytestmark = pytest.mark.integration

# Panels that a short run cannot fill, by (dashboard uid, panel title), with the reason.
# Trace tables query Tempo, not Prometheus, and never appear in dashboard_queries().
EXEMPT: dict[tuple[str, str], str] = {}
WAIT_FOR_DATA_S = 30.0


def has_data(prom: PromProcess, expr: str) -> bool:
    """At least one sample that is a number: histogram_quantile over buckets that did not
    move in the window answers NaN, which a panel shows as no value."""
    return any(not sample.is_nan for sample in prom.query(expr))


def variable_values(prom: PromProcess) -> dict[tuple[str, str], set[str]]:
    """(dashboard uid, variable name): the values its ``label_values(selector, label)``
    query gives, as Grafana asks Prometheus for them."""
    found = {}
    for board in dashboards():
        for variable in board["templating"]["list"]:
            call = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
            assert call, variable
            values = {sample.labels.get(call[2]) for sample in prom.query(call[1])}
            found[(board["uid"], variable["name"])] = values - {None}
    return found


def test_every_dashboard_query_returns_data(tmp_path: Path) -> None:
    queries = [(uid, title, expr) for uid, title, expr in dashboard_queries()]
    assert queries
    port = free_port()
    # Prometheus first, so that it sees ERS's counters from their first exported value.
    prom = start_prometheus(tmp_path / "prometheus", [f"http://127.0.0.1:{port}"], [RULES])
    try:
        # Named otherwise than the default the dashboards hold until they load.
        env = {**BACKUPS_ON, "ERS_SERVICE_NAME": "ers-eu-1"}
        ers = start_ers(tmp_path / "ers", env=env, port=port)
        try:
            prom.wait_for(lambda: prom.query('up{job="ers"} == 1'), timeout=10)
            run_faulty_workload(ers)
            pending = {(uid, title, expr) for uid, title, expr in queries}
            pending = {q for q in pending if (q[0], q[1]) not in EXEMPT}
            # Tempo's span metrics (the traced latency lines and their exemplars) reach
            # Prometheus by Tempo's remote write, which this test does not run.
            pending = {q for q in pending if "traces_spanmetrics_" not in q[2]}
            deadline = time.monotonic() + WAIT_FOR_DATA_S
            while pending and time.monotonic() < deadline:
                pending = {q for q in pending if not has_data(prom, q[2])}
                if pending:
                    time.sleep(1)
            variables = variable_values(prom)
        finally:
            exit_code = ers.stop()
        assert exit_code == 0, ers.log()
    finally:
        prom.stop()

    # What each variable offers: the agents, and ERS's service.name, which Tempo's span
    # metrics carry as their service label.
    assert variables[("ers-agents", "agent")] >= {"router", "nutrition", "workout", "budget"}
    for uid in ("ers-agents", "ers-system-health"):
        assert variables[(uid, "service")] == {"ers-eu-1"}, variables
    empty = sorted(pending)
    for uid, title, expr in empty:
        print(f"no data: {uid} / {title}: {expr}")
    for (uid, title), reason in EXEMPT.items():
        print(f"exempt: {uid} / {title}: {reason}")
    assert not empty, f"{len(empty)} of {len(queries)} dashboard queries returned no data"
