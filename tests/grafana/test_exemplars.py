"""Metrics-to-trace links: the latency panels ask Prometheus for exemplars of a histogram that
carries them (Tempo's span metrics), and the Prometheus datasource turns the exemplar label
Tempo writes into a link to the Tempo datasource."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
build = importlib.import_module("grafana.build")
panels = importlib.import_module("grafana.panels")
dashboard_queries = importlib.import_module("tests.grafana.queries").dashboard_queries

TEMPO_CONFIG = ROOT / "deploy" / "tempo.yaml"
# Tempo's metrics generator names the exemplar label traceID unless the overrides set
# trace_id_label_name (modules/generator/registry: traceIDLabelName defaults to "traceID").
TEMPO_DEFAULT_TRACE_ID_LABEL = "traceID"


def tempo() -> dict[str, Any]:
    return yaml.safe_load(TEMPO_CONFIG.read_text())


def label_overrides(value: Any) -> list[str]:
    """Values of Tempo's trace_id_label_name override (metrics_generator.trace_id_label_name
    in the overrides, or the older flat metrics_generator_trace_id_label_name)."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, child in value.items():
            if str(key).endswith("trace_id_label_name"):
                found.append(str(child))
            found += label_overrides(child)
    elif isinstance(value, list):
        for child in value:
            found += label_overrides(child)
    return found


def prometheus_datasource() -> dict[str, Any]:
    sources = yaml.safe_load((ROOT / build.DATASOURCES_FILE).read_text())["datasources"]
    return next(source for source in sources if source["type"] == "prometheus")


def tempo_datasource_uid() -> str:
    sources = yaml.safe_load((ROOT / build.DATASOURCES_FILE).read_text())["datasources"]
    return next(source["uid"] for source in sources if source["type"] == "tempo")


def boards() -> dict[str, dict[str, Any]]:
    paths = (ROOT / build.DASHBOARDS_DIR).glob("*.json")
    return {path.stem: json.loads(path.read_text()) for path in paths}


def test_tempo_writes_span_metrics_with_exemplars_to_prometheus() -> None:
    config = tempo()
    generator = config["metrics_generator"]
    [remote_write] = generator["storage"]["remote_write"]
    assert remote_write["url"] == "http://prometheus:9090/api/v1/write"
    assert remote_write["send_exemplars"] is True
    assert "span-metrics" in config["overrides"]["defaults"]["metrics_generator"]["processors"]
    # The per-agent panel filters on ers_agent: the generator's name for ers.agent.
    assert "ers.agent" in generator["processor"]["span_metrics"]["dimensions"]


def test_the_exemplar_destination_is_the_label_tempo_writes_and_links_to_tempo() -> None:
    overrides = set(label_overrides(tempo()))
    assert len(overrides) <= 1, overrides
    tempo_label = overrides.pop() if overrides else TEMPO_DEFAULT_TRACE_ID_LABEL
    [destination] = prometheus_datasource()["jsonData"]["exemplarTraceIdDestinations"]
    assert destination["name"] == tempo_label
    assert tempo_label == panels.EXEMPLAR_TRACE_ID_LABEL
    assert destination["datasourceUid"] == tempo_datasource_uid()
    assert "url" not in destination, "an internal link opens the trace in the Tempo datasource"


def test_both_latency_panels_fetch_exemplars_of_the_span_metrics_histogram() -> None:
    for uid in ("ers-system-health", "ers-agents"):
        [latency] = [p for p in boards()[uid]["panels"] if p["title"] == "Latency"]
        exemplar_targets = [t for t in latency["targets"] if t.get("exemplar")]
        assert exemplar_targets, f"{uid} / Latency asks for no exemplars"
        for target in exemplar_targets:
            assert panels.SPAN_LATENCY in target["expr"]
            # Tempo labels ERS's spans with their service.name, however it is set.
            assert 'service="$service"' in target["expr"]
            assert not target.get("instant"), "exemplars come with range queries only"


def test_only_series_that_carry_exemplars_ask_for_them() -> None:
    for uid, board in boards().items():
        for panel in board["panels"]:
            for target in panel["targets"]:
                if target.get("exemplar"):
                    assert panels.SPAN_LATENCY in target["expr"], (uid, panel["title"])
                    assert "ers_" not in target["expr"].replace("ers_agent", ""), (
                        uid,
                        panel["title"],
                    )


def test_ers_own_prometheus_exporter_writes_no_exemplars() -> None:
    """Why the panels read Tempo's histogram for exemplars: a histogram recorded inside a
    sampled span and exposed in OpenMetrics (the only format with exemplars) has none."""
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    meters = MeterProvider(metric_readers=[reader])
    tracer = TracerProvider().get_tracer("test")
    histogram = meters.get_meter("test").create_histogram("ers_probe_duration_seconds", unit="s")
    try:
        with tracer.start_as_current_span("agent.probe") as span:
            assert span.get_span_context().trace_flags.sampled
            histogram.record(0.25, {"agent": "probe"})
        text = generate_latest(registry).decode()
    finally:
        meters.shutdown()
    bucket = "ers_probe_duration_seconds_bucket{"
    lines = text.splitlines()
    assert any(line.startswith(bucket) and 'le="5.0"' in line for line in lines), text
    assert "# {" not in text


def test_the_agents_traced_line_reads_the_agent_spans_alone(tmp_path: Path) -> None:
    """Tempo's span metrics label every span carrying ers.agent with ers_agent: besides the
    guarded call's agent.<name>, the fallback.<name> spans under it and a breaker's trip span
    agent.<name>.breaker. The per-agent p95 is that of the calls, as the panel says."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    [expr] = [
        e
        for uid, title, e in dashboard_queries()
        if (uid, title) == ("ers-agents", "Latency") and panels.SPAN_LATENCY in e
    ]
    # Ten spans a minute each; the calls all under 0.1 s, the others all between 1 and 5 s.
    spans = {"agent.budget": "0.1", "fallback.workout": "5", "agent.budget.breaker": "5"}
    series = []
    for span_name, le_of_all in spans.items():
        for le in ("0.1", "5", "+Inf"):
            labels = f'service="ers", span_name="{span_name}", ers_agent="budget", le="{le}"'
            below = float(le) < float(le_of_all)
            values = "0x30" if below else "0+10x30"
            series.append({"series": f"{panels.SPAN_LATENCY}{{{labels}}}", "values": values})
    # The calls' p95 is under 0.1 s; with the other spans mixed in it would be over 1 s.
    case = {
        "expr": f"({expr}) < bool 0.1",
        "eval_time": "20m",
        "exp_samples": [{"labels": '{ers_agent="budget"}', "value": 1}],
    }
    test = {"interval": "1m", "input_series": series, "promql_expr_test": [case]}
    path = tmp_path / "traced.yml"
    path.write_text(yaml.safe_dump({"rule_files": [], "tests": [test]}, sort_keys=False))
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{expr}"
