"""The collector config cannot run here (no collector binary), so its wiring is checked."""

from __future__ import annotations

import gzip
import random
import re
import string
from pathlib import Path

import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from service.settings import Settings

CONFIG_TEXT = (Path(__file__).resolve().parents[2] / "telemetry" / "otelcol.yaml").read_text()
CONFIG = yaml.safe_load(CONFIG_TEXT)


def test_every_pipeline_component_is_defined() -> None:
    for name, pipeline in CONFIG["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                defined = CONFIG.get(kind, {}) | CONFIG.get("connectors", {})
                assert component in defined, f"{name} uses undefined {kind[:-1]} {component}"


def test_tempo_sees_every_span_and_only_errors_go_to_ers() -> None:
    """Tempo derives the span metrics from every trace (deploy/tempo.yaml); the collector
    derives none of its own, which no dashboard or rule read."""
    pipelines = CONFIG["service"]["pipelines"]
    assert pipelines["traces"]["exporters"] == ["otlp/tempo"]
    assert not any(p.startswith("filter") for p in pipelines["traces"]["processors"])
    assert set(pipelines) == {"traces", "traces/errors"} and "connectors" not in CONFIG
    errors = pipelines["traces/errors"]
    assert errors["exporters"] == ["otlphttp/ers"]
    (filter_name,) = [p for p in errors["processors"] if p.startswith("filter")]
    assert "status.code != STATUS_CODE_ERROR" in CONFIG["processors"][filter_name]["traces"]["span"]


def test_exporters_point_at_tempo_and_the_ers_intake() -> None:
    exporters = CONFIG["exporters"]
    assert exporters["otlp/tempo"] == {"endpoint": "tempo:4317", "tls": {"insecure": True}}
    assert set(exporters) == {"otlp/tempo", "otlphttp/ers"}
    ers = exporters["otlphttp/ers"]
    # Where to is compose's choice (tests/compose): one replica, or the fleet's balancer.
    assert ers["endpoint"] == "${env:ERS_INTAKE_ENDPOINT}"
    assert "headers" not in ers, "the token comes from a file, not a header in the config"
    authenticator = ers["auth"]["authenticator"]
    assert CONFIG["extensions"][authenticator] == {"filename": "/run/secrets/ers_intake_token"}
    assert {"health_check", authenticator} <= set(CONFIG["service"]["extensions"])


# ---- How large a batch to ERS can be ------------------------------------------------------

# What no OTTL statement bounds, assumed in otelcol.yaml's comment on batch/ers.
KEY_BYTES = 64
EXCEPTION_EVENTS = 4


def bounds(context: str) -> tuple[int, int]:
    """(attribute count, value length) that transform/bound_error_spans allows in a context."""
    transform = CONFIG["processors"]["transform/bound_error_spans"]
    (group,) = [g for g in transform["trace_statements"] if g["context"] == context]
    text = "\n".join(group["statements"])
    count = re.search(r"^limit\(attributes, (\d+),", text, re.MULTILINE)
    length = re.search(r"^truncate_all\(attributes, (\d+)\)", text, re.MULTILINE)
    assert count and length, f"{context}: attributes are not bounded"
    return int(count[1]), int(length[1])


def substring_bound(field: str, context: str = "span") -> int:
    transform = CONFIG["processors"]["transform/bound_error_spans"]
    (group,) = [g for g in transform["trace_statements"] if g["context"] == context]
    pattern = rf"^set\({re.escape(field)}, Substring\({re.escape(field)}, 0, (\d+)\)\)"
    found = re.search(pattern, "\n".join(group["statements"]), re.MULTILINE)
    assert found, f"{field} is not bounded"
    return int(found[1])


def random_text(rng: random.Random, length: int) -> str:
    # Printable ASCII drawn at random: one byte a character, and next to incompressible.
    return "".join(rng.choice(string.printable[:94]) for _ in range(length))


def attributes(rng: random.Random, count: int, length: int) -> list[KeyValue]:
    return [
        KeyValue(
            key=f"{i:02d}" + random_text(rng, KEY_BYTES - 2),
            value=AnyValue(string_value=random_text(rng, length)),
        )
        for i in range(count)
    ]


def worst_scope(rng: random.Random) -> InstrumentationScope:
    return InstrumentationScope(
        name=random_text(rng, substring_bound("name", "scope")),
        version=random_text(rng, substring_bound("version", "scope")),
        attributes=attributes(rng, *bounds("scope")),
    )


def worst_resource_spans(rng: random.Random) -> ResourceSpans:
    """One error span as large as the bounds let it be, under a resource of its own."""
    span = Span(
        trace_id=rng.randbytes(16),
        span_id=rng.randbytes(8),
        parent_span_id=rng.randbytes(8),
        name=random_text(rng, substring_bound("name")),
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=(1 << 64) - 2,
        end_time_unix_nano=(1 << 64) - 1,
        attributes=attributes(rng, *bounds("span")),
        events=[
            Span.Event(
                time_unix_nano=(1 << 64) - 1,
                name="exception",
                attributes=attributes(rng, *bounds("spanevent")),
            )
            for _ in range(EXCEPTION_EVENTS)
        ],
        status=Status(
            code=Status.STATUS_CODE_ERROR,
            message=random_text(rng, substring_bound("status.message")),
        ),
    )
    return ResourceSpans(
        resource=Resource(attributes=attributes(rng, *bounds("resource"))),
        scope_spans=[ScopeSpans(scope=worst_scope(rng), spans=[span])],
    )


def test_error_spans_are_bounded_before_they_are_batched_for_ers() -> None:
    processors = CONFIG["service"]["pipelines"]["traces/errors"]["processors"]
    filter_at = next(i for i, p in enumerate(processors) if p.startswith("filter"))
    assert processors.index("transform/bound_error_spans") > filter_at
    # The last step: nothing after the batch can make it larger.
    assert processors[-1] == "batch/ers"
    events = CONFIG["processors"]["filter/errors_from_others"]["traces"]["spanevent"]
    assert events == ['name != "exception"']
    # The W3C trace state has no bound of its own, and ERS reads nothing of it.
    transform = CONFIG["processors"]["transform/bound_error_spans"]
    (span,) = [g for g in transform["trace_statements"] if g["context"] == "span"]
    assert 'set(trace_state, "") where trace_state != ""' in span["statements"]


def test_the_largest_batch_to_ers_fits_under_its_body_limit() -> None:
    limit = Settings.model_fields["max_body_bytes"].default
    batch = CONFIG["processors"]["batch/ers"]
    size = batch["send_batch_max_size"]
    assert 0 < batch["send_batch_size"] <= size
    rng = random.Random(19)
    request = ExportTraceServiceRequest(
        resource_spans=[worst_resource_spans(rng) for _ in range(size)]
    )
    encoded = request.SerializeToString()
    one = len(
        ExportTraceServiceRequest(resource_spans=[request.resource_spans[0]]).SerializeToString()
    )
    print(f"worst error span {one} bytes; a batch of {size}: {len(encoded)} bytes; limit {limit}")
    assert len(encoded) <= limit, f"{size} worst-case spans are {len(encoded)} bytes"
    assert len(gzip.compress(encoded)) <= limit
    # The figures otelcol.yaml's comment gives are the ones measured here.
    text = CONFIG_TEXT.replace(",", "")
    assert f"{one} bytes" in text and f"are {len(encoded)} bytes" in text
    # And the bound is not loose by a whole span: one more would not fit.
    assert len(encoded) + one > limit
