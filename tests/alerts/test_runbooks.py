"""Every alert of every group in alerts/rules.yml links a runbook that exists in the repository
(the runbook_url's path is the file's path), each runbook has the sections a person paged at
night needs, and every `ers` command a runbook tells them to run is one the CLI accepts."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from service.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "rules.yml"
RUNBOOKS = ROOT / "docs" / "runbooks"
SECTIONS = ("## What fired", "## What ERS already did", "## What to check", "## Commands")
SHELL_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
# The compose stack runs the CLI inside the service's container.
IN_CONTAINER = "docker compose exec ers "


def alerting_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def runbook_path(rule: dict[str, Any]) -> Path:
    url = rule.get("annotations", {}).get("runbook_url")
    assert url, f"{rule['alert']} has no runbook_url"
    parsed = urlparse(url)
    assert parsed.scheme == "https" and parsed.netloc, url
    return ROOT / parsed.path.lstrip("/")


def ers_commands(text: str) -> list[str]:
    lines = [line.strip() for block in SHELL_BLOCK.findall(text) for line in block.splitlines()]
    return [
        line.removeprefix(IN_CONTAINER) for line in lines if line.startswith(("ers ", IN_CONTAINER))
    ]


def runbooks() -> list[Path]:
    return sorted(path for path in RUNBOOKS.glob("*.md") if path.name != "README.md")


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: rule["alert"])
def test_alert_links_its_own_runbook_file(rule: dict[str, Any]) -> None:
    assert "runbook" not in rule["annotations"], "the annotation is runbook_url"
    path = runbook_path(rule)
    assert path.parent == RUNBOOKS
    assert path.name == f"{rule['alert']}.md"
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"


@pytest.mark.parametrize("path", runbooks(), ids=lambda path: path.stem)
def test_runbook_has_the_sections_in_order(path: Path) -> None:
    text = path.read_text()
    assert text.startswith(f"# {path.stem}\n")
    positions = [text.find(section) for section in SECTIONS]
    assert all(p >= 0 for p in positions), dict(zip(SECTIONS, positions, strict=True))
    assert positions == sorted(positions)


@pytest.mark.parametrize("path", runbooks(), ids=lambda path: path.stem)
def test_runbook_is_for_an_alert_that_exists(path: Path) -> None:
    assert path.stem in {rule["alert"] for rule in alerting_rules()}


@pytest.mark.parametrize("path", [*runbooks(), RUNBOOKS / "README.md"], ids=lambda p: p.stem)
def test_every_ers_command_in_a_runbook_is_accepted_by_the_cli(path: Path) -> None:
    commands = ers_commands(path.read_text())
    assert commands, f"{path.name} gives no ers command"
    parser = build_parser()
    for command in commands:
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors):
                parser.parse_args(shlex.split(command)[1:])
        except SystemExit:
            pytest.fail(
                f"{path.name}: `{command}` is not a valid ers command:\n{errors.getvalue()}"
            )


def test_a_wrong_command_is_caught() -> None:
    # The check above must be able to fail: an unknown option and a wrong choice.
    parser = build_parser()
    for command in ("ers backup create --type everything", "ers breakers list --all"):
        with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
            parser.parse_args(shlex.split(command)[1:])
