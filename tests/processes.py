"""Real server processes for tests and benchmarks: a free loopback port, and a process
started with its output in a log file and waited for until it answers."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_process(
    command: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    ready_url: str,
    what: str,
    timeout_s: float = 30.0,
) -> subprocess.Popen[bytes]:
    """Start ``command`` with its output in ``log_path`` and wait until GET ``ready_url``
    answers 200. Raises RuntimeError with the log when it exits first or does not answer
    within ``timeout_s`` (then it is killed)."""
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    process.wait(timeout=5)
    raise RuntimeError(f"{what} did not answer in {timeout_s:g} s:\n{log_path.read_text()}")


def ers_env(workdir: Path, **extra: str) -> dict[str, str]:
    """The environment of an ``ers`` command (``serve``, an ``--offline`` one) in
    ``workdir``: this one without ERS_ and OTEL_ settings, state and repository under
    ``workdir``, and ``extra``."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ERS_", "OTEL_"))},
        "ERS_ENV": "test",
        "ERS_DATA_DIR": str(workdir / "data"),
        "ERS_RESTIC_REPOSITORY": str(workdir / "repo"),
        "ERS_RESTIC_PASSWORD_FILE": str(workdir / "restic-password"),
        **extra,
    }


def serve(workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``ers serve *args`` run to its end (one that is expected to refuse to start), without
    backups, with ``env`` added to ``ers_env``."""
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", *args],
        cwd=workdir,
        env=ers_env(workdir, ERS_BACKUPS_ENABLED="false", **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def restic_failing_on(folder: Path, word: str, stderr: str = "Fatal: disk full") -> Path:
    """A restic that fails, saying ``stderr``, whenever ``word`` is one of its arguments
    (``rollback.json``: the record of a rollback), and runs as restic otherwise."""
    restic = shutil.which("restic")
    assert restic is not None, "restic is not installed"
    wrapper = folder / "failing-restic"
    wrapper.write_text(
        f'#!/bin/sh\ncase " $* " in *" {word} "*) echo "{stderr}" >&2; exit 1;; esac\n'
        f'exec {restic} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def slow_restic(
    folder: Path, command: str = "restore", seconds: float = 30, marker: Path | None = None
) -> Path:
    """A restic that sleeps ``seconds`` before running ``command`` (its other commands run
    at once; ``rollback.json``: the record of a rollback), written in ``folder``: a rollback
    or a backup in the middle of its work, for a test to stop or kill there once ``marker``
    (touched as the sleep begins) exists."""
    restic = shutil.which("restic")
    assert restic is not None, "restic is not installed"
    wrapper = folder / "slow-restic"
    touch = f"touch {marker}; " if marker else ""
    wrapper.write_text(
        f'#!/bin/sh\ncase " $* " in *" {command} "*) {touch}sleep {seconds:g} ;; esac\n'
        f'exec {restic} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def rollback_until_recording(url: str, body: dict[str, Any], marker: Path, said: str) -> None:
    """POST the rollback ``body`` to the service at ``url`` from a thread (its answer never
    comes: the test kills the service), and wait at most a minute for ``marker``, which a
    ``slow_restic`` of ``rollback.json`` touches once the swap has committed and the record
    is being written; ``said`` when it never is."""

    def roll_back() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{url}/api/emergency/rollback", json=body, timeout=150)

    threading.Thread(target=roll_back, daemon=True).start()
    for _ in range(300):
        if marker.exists():
            return
        time.sleep(0.2)
    raise AssertionError(said)
