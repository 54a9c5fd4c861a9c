"""A program ERS starts does not outlive ERS: after a kill -9 of the process that started
it, a real restic backup that was waiting for its input stops, and leaves no snapshot in the
repository and no lock but a stale one, which the next command through ERS removes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from backup.locks import lock_is_stale
from backup.process import SETPRIV
from tests.conftest import run_restic

pytestmark = [
    pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed"),
    pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) is not installed"),
]

# The process that stands for ERS: it starts restic through backup.process and waits.
STARTER = """
import asyncio, os, sys
from backup.process import start_program

async def main():
    process = await start_program(
        "restic",
        ["--repo", sys.argv[1], "backup", "--stdin", "--stdin-filename", "state.db"],
        env=os.environ,
        stdin=int(sys.argv[2]),
    )
    print(process.pid, flush=True)
    await process.wait()

asyncio.run(main())
"""


def restic(repo: Path, password: Path, *args: str) -> str:
    done = run_restic(repo, password, *args, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def wait_until(condition: object, what: str, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} did not happen within {limit_s:g} s"
        time.sleep(0.1)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_restic_stops_with_the_process_that_started_it(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("a password\n")
    env = {**os.environ, "RESTIC_PASSWORD_FILE": str(password)}
    repo = tmp_path / "repo"
    restic(repo, password, "init")
    # restic reads its input from a pipe whose writing end this test holds open: it waits
    # for more for as long as it runs, and a killed starter does not end its input.
    reading, writing = os.pipe()
    os.write(writing, b"the first part of the state\n")
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(repo), str(reading)],
        env={**env, "PYTHONPATH": str(Path(__file__).parents[2])},
        stdout=subprocess.PIPE,
        text=True,
        pass_fds=(reading,),
    )
    os.close(reading)
    restic_pid = 0
    try:
        assert starter.stdout is not None
        restic_pid = int(starter.stdout.readline())
        # setpriv execs restic in the same process, a moment after it is started.
        wait_until(lambda: psutil.Process(restic_pid).name() == "restic", "restic's exec")
        wait_until(
            lambda: restic(repo, password, "list", "locks", "--no-lock").strip(),
            "restic taking its lock",
        )
        starter.send_signal(signal.SIGKILL)
        starter.wait(timeout=30)
        wait_until(lambda: gone(restic_pid), "restic stopping after its starter's kill -9")
        for lock_id in restic(repo, password, "list", "locks", "--no-lock").split():
            lock = json.loads(restic(repo, password, "cat", "lock", lock_id, "--no-lock"))
            assert lock["pid"] == restic_pid
            assert lock_is_stale(lock)
        assert json.loads(restic(repo, password, "snapshots", "--json")) == []
    finally:
        os.close(writing)
        starter.kill()
        starter.wait(timeout=30)
        if restic_pid and not gone(restic_pid):
            os.kill(restic_pid, signal.SIGKILL)
