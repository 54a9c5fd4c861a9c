"""Every ``ERS_`` variable the documentation and the deployment files name is one something
reads: a setting, one of the few the command line and the tests read, or one the collector's
configuration takes from compose. A name that differs (a renamed setting, a flag nothing
reads) would be set by an operator and ignored."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from service.config_checks import NOT_SETTINGS
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ("*.md", "*.yaml", "*.yml", "*.toml", "Dockerfile", "Makefile", "*.conf")
# The README's examples of misspelt variables, which the service names as such.
MISSPELT_ON_PURPOSE = frozenset({"ERS_MAX_MESSAGE_CHAR", "ERS_DATABSE_URL"})


def tracked_documents() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--", *DOCUMENTS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [ROOT / name for name in listed if not name.startswith("tests/")]


def collector_variables() -> set[str]:
    text = (ROOT / "telemetry" / "otelcol.yaml").read_text()
    return set(re.findall(r"\$\{env:(ERS_[A-Z0-9_]+)\}", text))


def test_every_ers_variable_named_is_read() -> None:
    settings = {f"ERS_{name.upper()}" for name in Settings.model_fields}
    read = settings | NOT_SETTINGS | collector_variables() | MISSPELT_ON_PURPOSE
    unread = {
        f"{variable} ({path.relative_to(ROOT)})"
        for path in tracked_documents()
        for variable in re.findall(r"\bERS_[A-Z0-9_]*[A-Z0-9]", path.read_text())
        if variable.split("__")[0] not in read
    }
    assert not unread, sorted(unread)
