"""The collector config cannot run here (no collector binary), so its wiring is checked."""

from __future__ import annotations

from pathlib import Path

import yaml

CONFIG = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "telemetry" / "otelcol.yaml").read_text()
)


def test_every_pipeline_component_is_defined() -> None:
    for name, pipeline in CONFIG["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                defined = CONFIG.get(kind, {}) | CONFIG.get("connectors", {})
                assert component in defined, f"{name} uses undefined {kind[:-1]} {component}"


def test_spanmetrics_sees_every_span_and_only_errors_go_to_ers() -> None:
    pipelines = CONFIG["service"]["pipelines"]
    assert "spanmetrics" in pipelines["traces"]["exporters"]
    assert not any(p.startswith("filter") for p in pipelines["traces"]["processors"])
    assert pipelines["metrics"]["receivers"] == ["spanmetrics"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    errors = pipelines["traces/errors"]
    assert errors["exporters"] == ["otlphttp/ers"]
    (filter_name,) = [p for p in errors["processors"] if p.startswith("filter")]
    assert "status.code != STATUS_CODE_ERROR" in CONFIG["processors"][filter_name]["traces"]["span"]


def test_exporters_point_at_tempo_prometheus_and_the_ers_intake() -> None:
    exporters = CONFIG["exporters"]
    assert exporters["otlp/tempo"] == {"endpoint": "tempo:4317", "tls": {"insecure": True}}
    assert exporters["prometheus"]["endpoint"].endswith(":8889")
    ers = exporters["otlphttp/ers"]
    assert ers["endpoint"] == "http://ers:8000"
    assert ers["headers"]["Authorization"] == "Bearer ${env:ERS_INTAKE_TOKEN}"
    assert "health_check" in CONFIG["service"]["extensions"]
