"""Start and stop a real ERS (uvicorn) process, or the anchor app, for a benchmark."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.processes import free_port, start_process

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def on_cpus(cpus: set[int]) -> Iterator[None]:
    """This thread, and the processes started meanwhile, run on ``cpus`` only. The mask is
    set on this thread before the fork, because setting it on a running process afterwards
    reaches only the one thread named, not the threads that process has already started."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def server_and_load_cpus() -> tuple[set[int], set[int]]:
    """One CPU for a server under test and another for the load generator, so that the
    scheduler never puts them on one CPU for a while (which slowed a run at random by up to
    a fifth); the same one for both on a machine with one."""
    cpus = sorted(os.sched_getaffinity(0))
    return {cpus[0]}, {cpus[-1]}


@dataclass(frozen=True)
class Served:
    url: str
    pid: int


@contextmanager
def _serve(command: list[str], env: dict[str, str], port: int, log_path: Path) -> Iterator[Served]:
    url = f"http://127.0.0.1:{port}"
    process = start_process(
        command, cwd=ROOT, env=env, log_path=log_path, ready_url=f"{url}/readyz", what=command[2]
    )
    try:
        yield Served(url, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("ERS_", "OTEL_"))}


@contextmanager
def ers_process(env: dict[str, str] | None = None) -> Iterator[Served]:
    """An ``ers serve`` process on a free port with its state in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="ers-bench-") as tmp:
        port = free_port()
        workdir = Path(tmp)
        full_env = {
            **_clean_environ(),
            "ERS_ENV": "test",
            "ERS_DATA_DIR": str(workdir / "data"),
            "ERS_RESTIC_REPOSITORY": str(workdir / "repo"),
            "ERS_RESTIC_PASSWORD_FILE": str(workdir / "restic-password"),
            "ERS_BACKUPS_ENABLED": "false",
            **(env or {}),
        }
        command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
        with _serve(command, full_env, port, workdir / "server.log") as served:
            yield served


@contextmanager
def ers_server(env: dict[str, str] | None = None) -> Iterator[str]:
    with ers_process(env) as served:
        yield served.url


@contextmanager
def anchor_process(instrumented: bool, database_url: str | None = None) -> Iterator[Served]:
    """The minimal FastAPI app of ``bench.anchor_app``, bare or instrumented as ERS is; with
    ``database_url``, reading a row of that PostgreSQL database per chat."""
    with tempfile.TemporaryDirectory(prefix="ers-bench-anchor-") as tmp:
        port = free_port()
        command = [sys.executable, "-m", "bench.anchor_app", "--port", str(port)]
        if instrumented:
            command.append("--instrumented")
        env = _clean_environ()
        if database_url is not None:
            env["ANCHOR_DATABASE_URL"] = database_url
        with _serve(command, env, port, Path(tmp) / "server.log") as served:
            yield served
