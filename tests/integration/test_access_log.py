"""`ers serve --access-log` writes a line per request, with the values of its query redacted:
a client's mistaken `?token=...` was written to the log as sent."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx

from tests.conftest import ErsProcess
from tests.processes import free_port, start_process


def test_the_access_log_keeps_query_names_and_redacts_their_values(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ERS_", "OTEL_"))}
    env |= {"ERS_ENV": "test", "ERS_DATA_DIR": str(tmp_path / "data")}
    env |= {"ERS_BACKUPS_ENABLED": "false", "ERS_ADMIN_TOKEN": "adm1n-f00d"}
    command = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1"]
    process = start_process(
        [*command, "--port", str(port), "--access-log"],
        cwd=tmp_path,
        env=env,
        log_path=tmp_path / "ers.log",
        ready_url=f"{url}/readyz",
        what="ers",
    )
    ers = ErsProcess(url, process, tmp_path / "ers.log")
    try:
        reset = f"{url}/api/emergency/circuit-breaker/budget/reset?token=s3cret-c0de&dry"
        assert httpx.post(reset, timeout=10).status_code == 401
        assert httpx.get(f"{url}/livez", timeout=10).status_code == 200
    finally:
        assert ers.stop() == 0
    log = ers.log()
    assert "s3cret-c0de" not in log
    assert '"POST /api/emergency/circuit-breaker/budget/reset?token=REDACTED&dry HTTP/1.1" 401' in (
        log
    ), log
    assert '"GET /livez HTTP/1.1" 200' in log
