"""`ers serve` says which ERS_ variables name no setting, at start, in its log, and `ers backup
--offline` says it on stderr in the same words."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import start_ers

TOLD = "ERS_MAX_MESSAGE_CHAR names no setting and is ignored (did you mean ERS_MAX_MESSAGE_CHARS?)"


def test_a_misspelt_variable_is_named_in_the_log_at_start(tmp_path: Path) -> None:
    ers = start_ers(tmp_path, env={"ERS_MAX_MESSAGE_CHAR": "10"})
    try:
        assert TOLD in ers.log()
    finally:
        ers.stop()


def test_an_offline_backup_command_names_it_as_the_service_does(tmp_path: Path) -> None:
    # Before: not a word, and a misspelt ERS_RESTIC_REPOSITORY or ERS_DATA_DIR had the command
    # work on the default's repository or data directory.
    password = tmp_path / "restic-password"
    password.write_text("pw")
    password.chmod(0o600)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ERS_", "OTEL_"))},
        "ERS_DATA_DIR": str(tmp_path / "data"),
        "ERS_RESTIC_REPOSITORY": str(tmp_path / "repo"),
        "ERS_RESTIC_PASSWORD_FILE": str(password),
        "ERS_MAX_MESSAGE_CHAR": "10",
    }
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "backup", "init", "--offline", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"ers: {TOLD}\n" in done.stderr
    assert json.loads(done.stdout)["created"] is True  # the reply alone on stdout
