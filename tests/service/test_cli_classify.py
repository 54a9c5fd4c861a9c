"""``ers classify --explain FILE``: a file that is JSON but not one span record gets one line
naming what the file must hold, never a traceback. ``ers trace``'s tree says why a span
failed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from rich.tree import Tree

from service.cli.incidents import _failing, draw_tree
from telemetry.classifier import load_rules
from telemetry.span_record import SpanRecord
from telemetry.trace_keeper import span_tree
from tests.telemetry.conftest import error_record


def explain(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "classify", "--explain", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "content",
    [
        {"name": "agent.budget", "status": "ERROR"},  # the status as a bare word
        [{"name": "agent.budget"}],  # a list of spans, not one
        {"name": "agent.budget", "events": ["exception"]},
        {"name": "agent.budget", "attributes": ["ers.agent"]},
        "agent.budget",
        None,
    ],
)
def test_a_file_that_is_not_one_span_record_is_refused_in_one_line(
    tmp_path: Path, content: object
) -> None:
    span = tmp_path / "span.json"
    span.write_text(json.dumps(content))
    result = explain(span)
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"ers: cannot read a span record from {span}"), result.stderr
    assert "ers trace TRACE_ID -o json" in result.stderr, result.stderr


def test_a_missing_file_is_named_in_one_line(tmp_path: Path) -> None:
    result = explain(tmp_path / "nope.json")
    assert result.returncode == 2, result.stdout
    assert result.stderr == (
        f"ers: cannot read a span record from {tmp_path / 'nope.json'}: No such file or directory\n"
    )


def test_one_span_as_ers_trace_json_lists_it_is_explained(tmp_path: Path) -> None:
    span = tmp_path / "span.json"
    span.write_text(
        json.dumps(
            {
                "name": "agent.budget",
                "spanId": "5221ffc3acc69d41",
                "status": {"code": "ERROR", "message": "SimulatedDatabaseError: timeout"},
                "attributes": {"error.type": "SimulatedDatabaseError", "ers.agent": "budget"},
                "events": [
                    {
                        "name": "exception",
                        "attributes": {
                            "exception.type": "SimulatedDatabaseError",
                            "exception.message": "Database connection timeout",
                        },
                    }
                ],
                "children": [],
            }
        )
    )
    result = explain(span)
    assert result.returncode == 0, result.stderr
    assert "MATCHED" in result.stdout and "database" in result.stdout, result.stdout


def test_a_trace_tree_shows_the_exception_of_a_span_whose_status_has_no_words() -> None:
    span = {
        "name": "charge",
        "durationMs": 12.5,
        "status": {"code": "ERROR", "message": ""},
        "events": [
            {
                "name": "exception",
                "attributes": {"exception.type": "CardDeclined", "exception.message": "expired"},
            }
        ],
        "children": [],
    }
    console = Console(width=120, record=True)
    console.print(draw_tree([span], Tree("trace")))
    # Before: "✗ charge  12.50 ms" and nothing to say why.
    assert "✗ charge  12.50 ms  CardDeclined: expired" in console.export_text()


def explain_stdin(document: object, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "classify", "--explain", "-", *options],
        input=json.dumps(document),
        capture_output=True,
        text=True,
        timeout=60,
    )


def a_trace() -> tuple[dict[str, object], list[SpanRecord]]:
    """A kept trace as `ers trace TRACE_ID -o json` prints it: a request that answered,
    a router that did, and two failing calls under it."""
    root = error_record("POST /chat", status="OK")
    router = error_record("agent.router", status="OK", attributes={"ers.agent": "router"})
    budget = error_record(
        "agent.budget",
        "SimulatedDatabaseError",
        "Database connection timeout",
        attributes={"ers.agent": "budget"},
    )
    orders = error_record(
        "GET /orders",
        "SocketException",
        "Connection reset",
        resource={"service.name": "orders"},
    )
    for number, (record, parent) in enumerate(
        [(root, None), (router, root), (budget, router), (orders, router)], start=1
    ):
        record.span_id = f"{number:016x}"
        record.parent_span_id = parent.span_id if parent else None
        record.start_ns = record.end_ns = 1_700_000_000_000_000_000 + number
    records = [root, router, budget, orders]
    document = {
        "traceId": root.trace_id,
        "spanCount": 4,
        "errorSpans": 2,
        "spans": span_tree(records),
    }
    return json.loads(json.dumps(document)), [budget, orders]


def test_a_whole_trace_from_ers_trace_json_explains_each_failing_span() -> None:
    document, failing = a_trace()
    result = explain_stdin(document, "-o", "json")  # `ers trace ID -o json | ers classify ...`
    assert result.returncode == 0, result.stderr
    explained = json.loads(result.stdout)
    assert [item["span"] for item in explained] == ["agent.budget", "GET /orders"]
    for item, record in zip(explained, failing, strict=True):
        assert item["spanId"] == record.span_id
        wanted = load_rules().classify(record)  # the shipped rules, as the command uses
        assert item["classification"]["fingerprint"] == wanted.fingerprint
        assert item["classification"]["rule"] == wanted.rule
    table = explain_stdin(document)
    assert table.returncode == 0, table.stderr
    assert "span agent.budget (0000000000000003):" in table.stdout
    assert "span GET /orders (0000000000000004):" in table.stdout
    assert table.stdout.count("MATCHED") == 2


def test_a_trace_without_a_failing_span_is_refused_in_one_line() -> None:
    document, _ = a_trace()
    document["spans"][0]["children"][0]["children"] = []  # type: ignore[index]
    result = explain_stdin(document)
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith("ers: cannot read a span record from stdin: the trace ")
    assert "has no failing span" in result.stderr


def test_a_trace_deeper_than_the_stack_is_read() -> None:
    document, _ = a_trace()
    deepest = {"name": "leaf", "status": {"code": "ERROR", "message": "boom"}, "children": []}
    node = deepest
    for depth in range(3_000):  # deeper than Python's recursion limit
        node = {"name": f"level-{depth}", "status": {"code": "OK"}, "children": [node]}
    document["spans"] = [node]
    assert _failing(document["spans"]) == [deepest]  # type: ignore[arg-type]


def test_json_nested_deeper_than_it_can_be_read_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"spans": ' + "[" * 100_000 + "]" * 100_000 + "}")
    result = explain(path)
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert "nested deeper than it can be read" in result.stderr


def classify_with_rules(tmp_path: Path, rules: Path) -> subprocess.CompletedProcess[str]:
    """``ers classify --explain`` of one failed span with the rules file ``rules``."""
    span = tmp_path / "span.json"
    span.write_text(json.dumps({"name": "agent.budget", "status": {"status_code": "ERROR"}}))
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "classify", "--explain", str(span)]
        + ["--rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"rules: [a: {", "is not valid YAML at line 1, column 13 (expected the node content"),
        (b"\xff\xfe rules", "is not UTF-8 text (byte 0)"),
    ],
)
def test_a_rules_file_that_cannot_be_read_is_refused_in_one_line(
    tmp_path: Path, content: bytes, said: str
) -> None:
    """PyYAML's own message is several lines, with the file's text in it."""
    rules = tmp_path / "rules.yaml"
    rules.write_bytes(content)
    result = classify_with_rules(tmp_path, rules)
    assert result.returncode == 2, result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and said in lines[0], result.stderr
    assert lines[0].startswith(f"ers: {rules} "), result.stderr


@pytest.mark.parametrize("template", ["{component}:{message", "{component}:message}", "{{type}}"])
def test_a_fingerprint_with_a_brace_of_no_placeholder_is_refused(
    tmp_path: Path, template: str
) -> None:
    """Taken as text, a mistyped placeholder made one fingerprint of every failure the rule
    classified: every component's failures in one incident."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump(
            {
                "fingerprint": template,
                "rules": [
                    {
                        "name": "default",
                        "severity": "low",
                        "type": "system",
                        "impact": "none",
                        "recoverable": True,
                    }
                ],
            }
        )
    )
    result = classify_with_rules(tmp_path, rules)
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith(f"ers: {rules}: rules[0] (default): fingerprint "), (
        result.stderr
    )
    assert "opens or closes no placeholder" in result.stderr, result.stderr


def test_a_failing_span_ers_counts_nowhere_is_explained_as_no_incident() -> None:
    """A remote agent's failed attempt is an error span under the agent span, which is the
    incident. Before, `ers classify --explain` gave it a component and fingerprint of its
    own, as though it were (or would be) an incident of its own."""
    document, _ = a_trace()
    attempt = error_record(
        "POST",
        "503",
        "",
        attributes={"ers.not_an_incident": "reported by the agent span", "error.type": "503"},
    )
    attempt.span_id, attempt.start_ns, attempt.end_ns = "00000000000000ff", 1, 2
    budget = document["spans"][0]["children"][0]["children"][0]  # type: ignore[index]
    budget["children"] = span_tree([attempt])
    result = explain_stdin(document, "-o", "json")
    assert result.returncode == 0, result.stderr
    explained = {item["span"]: item for item in json.loads(result.stdout)}
    assert explained["POST"]["notAnIncident"] == "reported by the agent span"
    assert explained["agent.budget"]["notAnIncident"] is None
    table = explain_stdin(document)
    assert table.returncode == 0, table.stderr
    assert table.stdout.count("but no incident") == 1, table.stdout
    assert "(ers.not_an_incident: reported by the agent span)" in table.stdout
