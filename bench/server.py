"""Start and stop a real ERS (uvicorn) process for a benchmark."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def ers_server(env: dict[str, str] | None = None) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="ers-bench-") as tmp:
        port = free_port()
        workdir = Path(tmp)
        full_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("ERS_", "OTEL_"))},
            "ERS_ENV": "test",
            "ERS_DATA_DIR": str(workdir / "data"),
            "ERS_RESTIC_REPOSITORY": str(workdir / "repo"),
            "ERS_RESTIC_PASSWORD_FILE": str(workdir / "restic-password"),
            "ERS_BACKUPS_ENABLED": "false",
            **(env or {}),
        }
        log = (workdir / "server.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
            cwd=Path(__file__).resolve().parent.parent,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((workdir / "server.log").read_text())
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
