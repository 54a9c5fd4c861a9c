"""Every metric that alerts/rules.yml queries is one ERS exports: a renamed metric would
otherwise leave its alert silently matching nothing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

RULES = Path(__file__).resolve().parents[2] / "alerts" / "rules.yml"

# What ERS serves at GET /metrics (plus `up`, which Prometheus writes for every target).
ERS_METRICS = frozenset(
    {
        "ers_agent_calls_total",
        "ers_agent_call_duration_seconds_bucket",
        "ers_agent_call_duration_seconds_sum",
        "ers_agent_call_duration_seconds_count",
        "ers_chat_requests_total",
        "ers_fallbacks_total",
        "ers_breaker_state",
        "ers_breaker_transitions_total",
        "ers_breaker_rejected_calls_total",
        "ers_breaker_forced_opens_total",
        "ers_incidents_total",
        "ers_incidents_active",
        "ers_backup_last_success_timestamp_seconds",
        "ers_backup_interval_seconds",
        "ers_backup_failures_total",
        "ers_backup_last_verified_timestamp_seconds",
        "ers_backup_offsite_last_success_timestamp_seconds",
        "ers_backup_offsite_interval_seconds",
        "ers_backup_offsite_failures_total",
        "ers_backup_offsite_retention_last_success_timestamp_seconds",
        "ers_backup_offsite_retention_last_failure_timestamp_seconds",
        "ers_restore_drill_success",
        "ers_restore_drill_interval_seconds",
        "ers_process_memory_ratio",
        "ers_system_state",
        "ers_health_check_status",
        "up",
    }
)
# What the watchers serve, for the alerts that watch them (the ers-monitoring group).
WATCHER_METRICS = frozenset(
    {
        "alertmanager_notifications_failed_total",
        # The collector's failed sends to ERS's intake, with the name v0.109 on gives, and
        # the one it gave before.
        "otelcol_exporter_send_failed_spans_total",
        "otelcol_exporter_send_failed_spans",
    }
)

PROMQL_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
# Label lists after by/without/on/ignoring/group_left/group_right name labels, not metrics.
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?!\w)(\s*\()?")
_NUMBER_UNIT = re.compile(r"^\d")


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression: identifiers that are not functions,
    aggregations, keywords or label names."""
    text = _STRING.sub('""', expr)
    text = _LABEL_MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LIST.sub("", text)
    names = set()
    for name, call in _IDENTIFIER.findall(text):
        if call or name.lower() in PROMQL_KEYWORDS or _NUMBER_UNIT.match(name):
            continue
        names.add(name)
    return names


def rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            'sum by (agent) (rate(ers_agent_calls_total{outcome=~"failure|timeout"}[5m])) > 0.5',
            {"ers_agent_calls_total"},
        ),
        (
            "time() - ers_backup_last_success_timestamp_seconds > 2 * ers_backup_interval_seconds",
            {"ers_backup_last_success_timestamp_seconds", "ers_backup_interval_seconds"},
        ),
        (
            'up{job="ers"} == 0 and on (instance) ers:chat_error_ratio:rate5m > (14.4 * 0.001)',
            {"up", "ers:chat_error_ratio:rate5m"},
        ),
        ('(sum(rate(x_total{a="b"}[1h])) or vector(0)) / sum(rate(x_total[1h]))', {"x_total"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)") offset 5m', {"m"}),
    ],
)
def test_metric_names_finds_selectors_and_skips_the_rest(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_rules_query_only_metrics_ers_exports() -> None:
    recorded = recorded_names()
    used = set().union(*(metric_names(rule["expr"]) for rule in rules())) - recorded
    assert used, "no metric found: the extraction is broken"
    assert used - ERS_METRICS - WATCHER_METRICS == set()


def test_recording_rules_are_named_level_metric_operations() -> None:
    # level:metric:operations, the Prometheus naming practice, keeps them apart from raw metrics.
    assert recorded_names(), "the SLO alerts need their recording rules"
    for name in recorded_names():
        assert re.fullmatch(r"ers:[a-z_]+:[a-z0-9_]+", name), name
        assert name not in ERS_METRICS
