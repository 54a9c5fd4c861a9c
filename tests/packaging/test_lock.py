"""requirements.lock pins every dependency of pyproject.toml, and every way of installing ERS
(make's venv, which CI uses through `make test`, and the Docker image) installs through it."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, requirement
    return canonical(match[0])


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.match(line.strip())
        assert match, f"requirements.lock line is not an exact pin: {line!r}"
        found[canonical(match[1])] = match[2]
    return found


def test_every_pyproject_dependency_is_pinned_exactly() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted += extra
    missing = sorted({requirement_name(r) for r in wanted} - set(pins()))
    assert missing == [], f"not in requirements.lock (run `make lock`): {missing}"


def test_the_lock_does_not_pin_the_project_itself() -> None:
    assert "emergency-response" not in pins()


def test_make_installs_through_the_lock_and_reinstalls_when_it_changes() -> None:
    text = (ROOT / "Makefile").read_text()
    assert re.search(r"^LOCK := requirements\.lock$", text, re.MULTILINE)
    stamp_rule = re.search(r"^\$\(STAMP\):(.*)$", text, re.MULTILINE)
    assert stamp_rule and "$(LOCK)" in stamp_rule[1].split()
    assert "$(PY) -m pip install --quiet --constraint $(LOCK) -e '.[test]'" in text
    assert re.search(r"^lock:", text, re.MULTILINE), "no `make lock` to refresh the lock"
    # CI runs the README's `make test`, which needs the stamp.
    assert re.search(r"^test: \$\(STAMP\)", text, re.MULTILINE)
    assert re.search(r"^run: \$\(STAMP\)", text, re.MULTILINE)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def make_dry_run(*arguments: str, env: dict[str, str] | None = None) -> str:
    """What `make --dry-run` with these arguments would run, with a venv that is not there."""
    result = subprocess.run(
        ["make", "--dry-run", *arguments, "VENV=/nonexistent-venv"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0 and "make: not found" in result.stderr:
        pytest.skip("make is not installed")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_dry_run_installs_with_the_lock() -> None:
    printed = make_dry_run("--always-make", "venv")
    assert "pip install --quiet --constraint requirements.lock -e '.[test]'" in printed


def make_run_command(**variables: str) -> str:
    """The `ers serve` line `make run` runs, with these make variables given."""
    environ = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT")}
    given = [f"{name}={value}" for name, value in variables.items()]
    printed = make_dry_run("run", *given, env={**environ, "ERS_PORT": "8100"})
    return next(line for line in printed.splitlines() if "ers serve" in line)


def test_make_run_leaves_host_and_port_to_the_settings_unless_given() -> None:
    # ERS_PORT (or ers.yaml's port) is where `ers serve` listens: `make run` passed
    # --port 8000 and --host 127.0.0.1 always, which override every setting of them.
    assert "--port" not in make_run_command() and "--host" not in make_run_command()
    assert make_run_command(PORT="8200").split()[-2:] == ["--port", "8200"]
    assert "--host 0.0.0.0" in make_run_command(HOST="0.0.0.0")


def test_the_image_installs_through_the_lock() -> None:
    text = (ROOT / "Dockerfile").read_text()
    copy = re.search(r"^COPY (.*) \./$", text, re.MULTILINE)
    assert copy and "requirements.lock" in copy[1].split()
    assert re.search(r"^RUN pip install \. --constraint requirements\.lock\b", text, re.MULTILINE)
