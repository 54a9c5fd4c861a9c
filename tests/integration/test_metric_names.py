"""Every metric name a dashboard or an alert uses is produced by a running ERS.

A renamed or never-registered metric leaves its panel empty and its alert silent without any
error, so the names are checked against a real scrape of ``ers serve`` under a workload with
injected faults, backups, breakers and a rollback.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from grafana.build import datasources
from tests.alerts.test_rules_metric_names import WATCHER_METRICS, metric_names
from tests.conftest import ROOT, ErsProcess, start_ers
from tests.grafana.queries import dashboard_queries

pytestmark = pytest.mark.integration

RULES = ROOT / "alerts" / "rules.yml"
BACKUPS_ON = {
    "ERS_BACKUPS_ENABLED": "true",
    "ERS_BACKUP_SCHEDULE_ENABLED": "true",
    "ERS_RESTORE_DRILL_INTERVAL_MINUTES": "1",
}
# Series Prometheus writes for every target itself.
FROM_PROMETHEUS = frozenset({"up"})
# Served by the watchers (Alertmanager, the collector), not by ERS: the rules' own list
# (tests/alerts, which checks that a real Alertmanager exports its counter).
FROM_WATCHERS = WATCHER_METRICS
# Series Tempo's metrics generator remote-writes from ERS's spans (deploy/tempo.yaml).
FROM_TEMPO = frozenset({"traces_spanmetrics_latency_bucket"})
MESSAGES = ("plan my meals", "make me a workout plan", "budget report", "hello")
# Every request loop below is bounded by one of these as well as by a deadline.
MAX_ROUNDS = 40
MAX_POLLS = 200
# Series of a histogram or summary family besides the family name itself.
PARTS = frozenset({"_bucket", "_sum", "_count", "_created"})
_SERIES_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_families(exposition: str) -> dict[str, set[str]]:
    """The exact series names of a Prometheus text exposition (``x_bucket``, ``x_count``,
    ``y_total``...), as a PromQL selector has to spell them, grouped by the family that its
    ``# TYPE`` line names; a series without one is its own family."""
    typed = {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE ")}
    families: dict[str, set[str]] = {}
    for line in exposition.splitlines():
        if not line or line.startswith("#") or not (match := _SERIES_NAME.match(line)):
            continue
        name = match.group()
        parts_of = (f for f in typed if name.startswith(f) and name[len(f) :] in PARTS)
        family = name if name in typed else next(parts_of, name)
        families.setdefault(family, set()).add(name)
    return families


def trace_to_metrics_queries() -> list[tuple[str, str]]:
    """(name, PromQL) of the queries Grafana runs from a Tempo span; $__tags becomes the
    span's agent label, as Grafana fills it."""
    tempo = next(s for s in datasources()["datasources"] if s["type"] == "tempo")
    return [
        (q["name"], q["query"].replace("$__tags", 'agent="budget"'))
        for q in tempo["jsonData"]["tracesToMetrics"]["queries"]
    ]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def used_metric_names() -> dict[str, set[str]]:
    """Each metric name the dashboards, Grafana's trace-to-metrics links and the alert
    rules select, with where it is used; names recorded by the rules themselves left out."""
    used: dict[str, set[str]] = {}

    def add(where: str, exprs: Iterable[str]) -> None:
        for expr in exprs:
            for name in metric_names(expr):
                used.setdefault(name, set()).add(where)

    for uid, title, expr in dashboard_queries():
        add(f"dashboard {uid} / {title}", [expr])
    for name, expr in trace_to_metrics_queries():
        add(f"Tempo trace to metrics / {name}", [expr])
    rules = alert_rules()
    for rule in rules:
        add(f"rules.yml {rule.get('alert') or rule.get('record')}", [rule["expr"]])
    for rule in rules:
        used.pop(rule.get("record", ""), None)
    return used


def run_faulty_workload(ers: ErsProcess, seconds: float = 6.0) -> None:
    """``faulty_workload``; when it fails, with the service's log and thread stacks."""
    try:
        faulty_workload(ers, seconds)
    except AssertionError as exc:
        ers.process.send_signal(signal.SIGUSR1)
        time.sleep(1)
        raise AssertionError(f"{exc}\nERS log:\n{ers.log()[-8000:]}") from None


def faulty_workload(ers: ErsProcess, seconds: float = 6.0) -> None:
    """Chat traffic while first the budget, then the nutrition agent fails half its calls and
    the workout breaker is forced open now and again, manual backups, then a system test and
    two rollbacks with the faults cleared.

    Events repeat over several seconds so that a scraper at a 1 s interval sees counters and
    histograms grow between scrapes: a counter's first sample has no increase of its own."""
    with httpx.Client(base_url=ers.url, timeout=30) as client:
        ers.wait_for_backups()

        def post(path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
            response = client.post(path, json=body)
            assert response.status_code == 200, f"POST {path}: {response.text}"
            return response.json()

        def chat(messages: Iterable[str]) -> None:
            for index, message in enumerate(messages):
                post("/chat", {"message": message, "userId": f"user-{index % 3}"})

        rounds = 0
        for component in ("budget", "nutrition"):
            post(
                "/api/emergency/simulate-error",
                {"component": component, "errorType": "database", "failureRate": 0.5},
            )
            deadline = time.monotonic() + seconds / 2
            while time.monotonic() < deadline and rounds < MAX_ROUNDS:
                post(
                    "/api/emergency/circuit-breaker/workout/force-open",
                    {"reason": "integration test", "ttlSeconds": 0.4},
                )
                chat(MESSAGES * 3)
                if rounds % 3 == 0:
                    post("/api/emergency/backups/create", {})
                # Past the TTL, a workout call closes the breaker again, so that the next
                # round's force-open is a new transition rather than a renewal.
                time.sleep(0.5)
                chat(["make me a workout plan"])
                rounds += 1
            wait_for_response(client, component)
            assert client.delete("/api/emergency/simulate-error").status_code == 200

        # The canary runs on healthy agents: a synthetic failure would open an incident that
        # the responder leaves alone, and real failures would then only join it.
        post("/api/emergency/test-system")
        # A backup of unchanged components is skipped and has no id: take one from the list.
        listing = client.get("/api/emergency/backups").json()["backups"]
        backup_id = next(b["backupId"] for b in listing if "profiles" in b["components"])
        for _ in range(2):
            rollback = {"backupId": backup_id, "confirm": True, "reason": "integration test"}
            post("/api/emergency/rollback", {**rollback, "components": ["profiles"]})
            time.sleep(1.2)
        chat(MESSAGES * 3)


AGENT_MESSAGE = {"budget": "budget report", "nutrition": "plan my meals"}


def wait_for_response(client: httpx.Client, component: str) -> None:
    """Chat with ``component`` (failing at random) until the responder has isolated it: its
    incident mitigated, which is what produces the protocol action and recovery time series.
    A busy machine may have run so few rounds that none of the calls failed yet."""
    for _ in range(MAX_POLLS):
        listing = client.get("/api/emergency/incidents", params={"component": component})
        assert listing.status_code == 200, listing.text
        incidents = listing.json()["incidents"]
        if any(i["status"] in ("mitigated", "resolved") for i in incidents):
            return
        reply = client.post("/chat", json={"message": AGENT_MESSAGE[component], "userId": "u"})
        assert reply.status_code == 200, reply.text
        time.sleep(0.05)
    raise AssertionError(
        f"no {component} incident was mitigated: {incidents}\n{pipeline_state(client)}"
    )


def pipeline_state(client: httpx.Client) -> str:
    """The incident pipeline's counters and every thread's stack (SIGUSR1), for a failure."""
    lines = [
        line
        for line in client.get("/metrics").text.splitlines()
        if line.startswith(("ers_spans_classified", "ers_incident", "ers_breaker_state"))
    ]
    return "\n".join(lines)


@pytest.mark.parametrize(
    ("exposition", "expected"),
    [
        (
            "# HELP x_seconds Latency\n# TYPE x_seconds histogram\n"
            'x_seconds_bucket{le="0.1",path="/a b{c}"} 1.0\nx_seconds_sum 0.5\n'
            "x_seconds_count 1.0\n# TYPE x_seconds_total counter\nx_seconds_total 2\n",
            {
                "x_seconds": {"x_seconds_bucket", "x_seconds_sum", "x_seconds_count"},
                "x_seconds_total": {"x_seconds_total"},
            },
        ),
        (
            'up 1\nrequests_total{code="200"} 3 1700000000000\n\n',
            {"up": {"up"}, "requests_total": {"requests_total"}},
        ),
    ],
)
def test_metric_families_group_the_exact_series_names(
    exposition: str, expected: dict[str, set[str]]
) -> None:
    assert metric_families(exposition) == expected


def test_used_metric_names_cover_dashboards_and_rules_but_not_recorded_series() -> None:
    used = used_metric_names()
    assert "http_server_request_duration_seconds_bucket" in used
    assert "ers_agent_call_duration_seconds_bucket" in used
    assert "ers_restore_drill_interval_seconds" in used
    assert not [name for name in used if name.startswith("ers:")]


def test_every_metric_a_dashboard_or_alert_uses_is_exported(tmp_path: Path) -> None:
    # An off-host repository, so that the copy job's metrics exist too.
    (tmp_path / "offsite.pw").write_text("offsite-password")
    offsite = {
        "ERS_OFFSITE_REPOSITORY": str(tmp_path / "offsite-repo"),
        "ERS_OFFSITE_PASSWORD_FILE": str(tmp_path / "offsite.pw"),
    }
    ers = start_ers(tmp_path / "ers", env={**BACKUPS_ON, **offsite})
    try:
        run_faulty_workload(ers)
        response = httpx.get(f"{ers.url}/metrics", timeout=10)
        assert response.status_code == 200
        families = metric_families(response.text)
    finally:
        exit_code = ers.stop()
    assert exit_code == 0, ers.log()

    used = used_metric_names()
    exported = set().union(*families.values())
    missing = sorted(set(used) - exported - FROM_PROMETHEUS - FROM_WATCHERS - FROM_TEMPO)
    unused = sorted(
        f for f, series in families.items() if f.startswith("ers_") and not series & used.keys()
    )
    # Not a failure: a metric may be there for ad-hoc queries, but it is worth knowing.
    print("ers_* series no dashboard or alert uses:", ", ".join(unused) or "none")
    assert not missing, (
        "used but not exported by ERS:\n"
        + "\n".join(f"  {name}  ({'; '.join(sorted(used[name]))})" for name in missing)
        + f"\nERS log:\n{ers.log()[-6000:]}"
    )
