"""The example remote agent (examples/remote_agent) as a real uvicorn process on a free
loopback port, and a client for its admin endpoints."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.processes import free_port, start_process

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ExampleAgent:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def fail_next(self, mode: str, count: int = 1, **options: Any) -> None:
        reply = httpx.post(
            f"{self.url}/admin/failures", json={"mode": mode, "count": count, **options}, timeout=5
        )
        reply.raise_for_status()

    def calls(self) -> list[dict[str, Any]]:
        reply = httpx.get(f"{self.url}/admin/calls", timeout=5)
        reply.raise_for_status()
        return reply.json()

    def forget(self) -> None:
        httpx.delete(f"{self.url}/admin/calls", timeout=5).raise_for_status()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@contextlib.contextmanager
def running_example_agent(workdir: Path, token: str) -> Iterator[ExampleAgent]:
    """The example agent expecting ``token`` as its bearer token, stopped on the way out."""
    workdir.mkdir(parents=True, exist_ok=True)
    token_file = workdir / "expected-token"
    token_file.write_text(token + "\n")
    agent = start_example_agent(workdir, token_file)
    try:
        yield agent
    finally:
        agent.stop()


def start_example_agent(
    workdir: Path, token_file: Path | None = None, env: dict[str, str] | None = None
) -> ExampleAgent:
    """Start the example agent (with ``env`` added to its environment) and wait (30 s at
    most) until it answers."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    inherited = os.environ.items()
    env = {
        **{k: v for k, v in inherited if not k.startswith(("OTEL_", "EXAMPLE_AGENT_"))},
        **(env or {}),
    }
    if token_file is not None:
        env["EXAMPLE_AGENT_TOKEN_FILE"] = str(token_file)
    log_path = workdir / f"example-agent-{port}.log"
    url = f"http://127.0.0.1:{port}"
    process = start_process(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "examples.remote_agent.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        log_path=log_path,
        ready_url=f"{url}/admin/calls",
        what="the example agent",
    )
    return ExampleAgent(url, process, log_path)
