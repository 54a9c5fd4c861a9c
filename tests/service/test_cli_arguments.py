"""An empty name or id is a usage error said as such, before any request: it sent the
request to the list's route, whose redirect read as "is --url the ERS service?" (exit 5),
or to no route at all (exit 2, blaming --url)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    "command",
    [
        ["backup", "show", ""],
        ["incidents", "show", " "],
        ["trace", ""],
        ["breakers", "reset", ""],
        ["breakers", "show", ""],
    ],
)
def test_an_empty_id_is_refused_as_usage(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "--url", "http://127.0.0.1:9", *command],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == "ers: the name or id given is empty; the list commands show them\n"


@pytest.mark.parametrize(
    ("command", "help_of"),
    [
        (["status", "--bogus"], "ers status"),
        (["breakers", "list", "--bogus"], "ers breakers list"),
        (["--bogus", "backup", "list"], "ers backup list"),
    ],
)
def test_an_unknown_option_names_the_help_of_its_command(command: list[str], help_of: str) -> None:
    """It named `ers --help`, whose usage lists the commands but not their options."""
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", *command],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"ers: unrecognized arguments: --bogus; `{help_of} --help` shows the usage\n"
    )


@pytest.mark.parametrize(
    ("command", "named"),
    [
        (
            [b"incidents", b"resolve", b"INC_1796294115000_ab12cd", b"--resolution", b"fix\xff"],
            "--resolution",
        ),
        ([b"breakers", b"force-open", b"budget", b"--reason", b"\xe9t\xe9"], "--reason"),
        ([b"incidents", b"list", b"--component", b"\xff"], "--component"),
        ([b"incidents", b"show", b"INC_\xff"], "incident_id"),
        ([b"backup", b"rollback", b"\xff", b"--reason", b"x", b"--yes"], "backup_id"),
    ],
)
def test_an_argument_that_is_not_utf8_is_refused_as_usage(command: list[bytes], named: str) -> None:
    # A terminal in Latin-1: the request could not be encoded, and the HTTP client stopped
    # the command with a traceback.
    result = subprocess.run(
        [sys.executable.encode(), b"-m", b"service.cli", b"--url", b"http://127.0.0.1:9", *command],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"ers: {named} is not UTF-8 text (byte 0x"), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_a_file_named_in_bytes_that_are_not_utf8_is_still_opened(tmp_path: Path) -> None:
    span = tmp_path / os.fsdecode(b"span\xff.json")
    span.write_text('{"name": "agent.budget", "status": {"status_code": "ERROR"}}')
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "classify", "--explain", os.fsencode(span)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "agent.budget" in result.stdout
