"""``ers classify --explain FILE``: a file that is JSON but not one span record gets one line
naming what the file must hold, never a traceback. ``ers trace``'s tree says why a span
failed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.tree import Tree

from service.cli.incidents import draw_tree


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
