"""An empty name or id is a usage error said as such, before any request: it sent the
request to the list's route, whose redirect read as "is --url the ERS service?" (exit 5),
or to no route at all (exit 2, blaming --url)."""

from __future__ import annotations

import subprocess
import sys

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
