"""`ers serve` started where it cannot run, or stopped during its first start: what the
operator reads, and what the next start finds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port


def serve_env(workdir: Path, **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ERS_", "OTEL_"))},
        "ERS_ENV": "test",
        "ERS_DATA_DIR": str(workdir / "data"),
        "ERS_RESTIC_REPOSITORY": str(workdir / "repo"),
        "ERS_RESTIC_PASSWORD_FILE": str(workdir / "restic-password"),
        **extra,
    }


def test_a_port_in_use_is_refused_in_one_line_before_any_state_is_made(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = subprocess.run(
            [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1"]
            + ["--port", str(port)],
            cwd=tmp_path,
            env=serve_env(tmp_path, ERS_BACKUPS_ENABLED="true"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr  # unusable settings, as for every other one
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(f"ers: cannot listen on 127.0.0.1:{port}"), done.stderr
    assert "--port" in lines[-1] and "ERS_PORT" in lines[-1]
    assert "ERS ready" not in done.stderr
    # Nothing was started: no component file, so the next start is still a first start
    # and creates the backup repository.
    assert not list((tmp_path / "data").glob("*.sqlite3"))
    assert not (tmp_path / "repo").exists()
