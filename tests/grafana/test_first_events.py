"""A panel of rare events shows the first one: ERS exports such a counter (an incident, a
breaker transition, a forced open, a rollback, a protocol action) or histogram (a rollback's
duration, an incident's time to recover) only once it happens, already at 1, and increase()
or rate() over its series alone never counts that first sample. Each dashboard query over
those series runs in promtool against a series that appears at 1 and then stays there."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.alerts.test_rules_metric_names import metric_names
from tests.grafana.queries import GRAFANA_INTERVALS, dashboard_queries

PROMTOOL_TIMEOUT_S = 60
SCRAPE = "15s"
# Absent for the first hour, then the value from one event, scraped every 15 s for two hours.
ABSENT_SCRAPES = 240
APPEARS_S = ABSENT_SCRAPES * 15
# Within the $__rate_interval after the event (GRAFANA_INTERVALS: 5m), and long after it.
SOON_S = APPEARS_S + 120
LATER_S = APPEARS_S + 1800

OBSERVED_S = 2.0  # the one observation of each histogram
BUCKETS = {"0.5": 0, "1": 0, "5": 1, "+Inf": 1}


def histogram(name: str, labels: str) -> dict[str, float]:
    comma = ", " if labels else ""
    series = {f'{name}_bucket{{{labels}{comma}le="{le}"}}': n for le, n in BUCKETS.items()}
    series[f"{name}_sum{{{labels}}}"] = OBSERVED_S
    series[f"{name}_count{{{labels}}}"] = 1
    return series


# Each series ERS exports only once its first event happened, as that event leaves it.
FIRST_EVENT: dict[str, float] = {
    'ers_breaker_transitions_total{agent="workout", from="closed", to="forced_open"}': 1,
    'ers_breaker_forced_opens_total{agent="workout", source="alertmanager"}': 1,
    'ers_incidents_total{component="budget", severity="high", type="database"}': 1,
    'ers_protocol_actions_total{protocol="AGENT_FAILURE", action="isolate", result="success"}': 1,
    'ers_rollbacks_total{result="success"}': 1,
    "ers_backup_added_bytes_total": 4096,
    **histogram("ers_rollback_duration_seconds", ""),
    **histogram("ers_backup_duration_seconds", ""),
    **histogram("ers_incident_recovery_seconds", 'severity="high"'),
}
FIRST_EVENT_METRICS = {series.split("{")[0] for series in FIRST_EVENT}


def first_event_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard query that reads only those series."""
    return [
        (f"{uid} / {title}", expr)
        for uid, title, expr in dashboard_queries()
        if metric_names(expr) and metric_names(expr) <= FIRST_EVENT_METRICS
    ]


def test_the_panels_of_rare_events_are_the_ones_checked() -> None:
    titles = {where for where, _ in first_event_queries()}
    assert {
        "ers-agents / Breaker transitions",
        "ers-agents / Forced opens by source",
        "ers-agents / Forced opens in range",
        "ers-incidents / Incidents by severity",
        "ers-incidents / Time to recover",
        "ers-incidents / Protocol actions",
        "ers-backups / Rollbacks by result",
        "ers-backups / Rollback duration",
        "ers-backups / Bytes added",
    } <= titles


def run_promtool(tmp_path: Path, values: str, cases: list[dict[str, Any]]) -> None:
    """promtool's unit test of ``cases`` over every FIRST_EVENT series scraped as ``values``
    says (``{value}`` is the series' value)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    inputs = [{"series": s, "values": values.format(value=v)} for s, v in FIRST_EVENT.items()]
    test = {"interval": SCRAPE, "input_series": inputs, "promql_expr_test": cases}
    tests = {"rule_files": [], "evaluation_interval": SCRAPE, "tests": [test]}
    path = tmp_path / "first-events.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False, width=1000))
    result = subprocess.run(
        [promtool, "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
    )
    assert result.returncode == 0, f"{result.stdout}{result.stderr}"


def shows(expr: str, at_s: int, anything: bool) -> dict[str, Any]:
    """The case: at ``at_s`` the panel shows a value (a bar, a row, a quantile) or nothing."""
    samples = [{"labels": "{}", "value": 1}] if anything else []
    return {"expr": f"group(({expr}) > 0)", "eval_time": f"{at_s}s", "exp_samples": samples}


def per_step_queries() -> list[tuple[str, str]]:
    """The queries over each $__rate_interval, not over the dashboard's range."""
    window = f"[{GRAFANA_INTERVALS['__rate_interval']}]"
    return [(where, expr) for where, expr in first_event_queries() if window in expr]


def test_each_panel_of_rare_events_shows_the_first_one_and_only_while_it_is_recent(
    tmp_path: Path,
) -> None:
    assert per_step_queries()
    cases = [shows(expr, SOON_S, True) for _, expr in first_event_queries()]
    # Long after the event, a per-step panel is back to nothing: it counted the event once.
    cases += [shows(expr, LATER_S, False) for _, expr in per_step_queries()]
    run_promtool(tmp_path, f"_x{ABSENT_SCRAPES} {{value}}x480", cases)


def test_a_failed_scrape_does_not_show_an_old_series_as_a_new_event(tmp_path: Path) -> None:
    """A failed scrape writes staleness markers: the series' next sample is not its first."""
    window_s = int(GRAFANA_INTERVALS["__rate_interval"].removesuffix("m")) * 60
    # The scrape at APPEARS_S failed; a window later, `offset` would land on its marker.
    cases = [shows(expr, APPEARS_S + window_s, False) for _, expr in per_step_queries()]
    run_promtool(tmp_path, f"{{value}}x{ABSENT_SCRAPES - 1} stale {{value}}x480", cases)


def test_a_scrape_gap_longer_than_two_windows_does_not_show_an_old_series_as_new(
    tmp_path: Path,
) -> None:
    """Prometheus could not scrape ERS for 12.5 minutes (ERS overloaded in an incident, a
    Prometheus restart): the series was back, no event since, and every per-step panel drew
    the whole lifetime count as new events for a window, each quantile its lifetime's."""
    gap = 50
    back_s = APPEARS_S + gap * 15
    cases = [shows(expr, back_s + 60, False) for _, expr in per_step_queries()]
    run_promtool(tmp_path, f"{{value}}x{ABSENT_SCRAPES - 1} stale _x{gap - 1} {{value}}x480", cases)
