"""Stopping a program leaves its exit status to the event loop: asyncio's own send_signal and
kill poll the child first, and a poll that comes just after the child exited reaps it before
the loop's child watcher does, which then reports 255 and logs "Unknown child process pid" on
the stderr of ``ers`` under its one-line message."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from backup.process import start_program, stop_process

# Takes SIGINT (or ignores it), says so, then waits. A program ERS runs takes SIGINT as
# restic does, which asks for it even when it starts with it ignored, as any program started
# in the background by a script does (pytest run with `&`, and so its children).
LISTENING = (
    "import signal, time; signal.signal(signal.SIGINT, signal.{}); "
    "print('ready', flush=True); time.sleep(60)"
)


@pytest.fixture
def polls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids subprocess.Popen.poll was called for."""
    seen: list[int] = []
    poll = subprocess.Popen.poll

    def counted(self: subprocess.Popen[bytes]) -> int | None:
        seen.append(self.pid)
        return poll(self)

    monkeypatch.setattr(subprocess.Popen, "poll", counted)
    return seen


async def started(program: str) -> asyncio.subprocess.Process:
    process = await start_program(sys.executable, ["-c", program], env=os.environ)
    assert process.stdout is not None
    assert await process.stdout.readline() == b"ready\n"
    return process


async def test_a_program_stopped_by_sigint_exits_with_its_own_status_and_is_never_polled(
    polls: list[int],
) -> None:
    process = await started(LISTENING.format("SIG_DFL"))

    await stop_process(process)

    assert process.returncode == -signal.SIGINT
    assert polls == []


async def test_a_program_deaf_to_sigint_is_killed_and_never_polled(polls: list[int]) -> None:
    process = await started(LISTENING.format("SIG_IGN"))

    await stop_process(process, grace_s=0.2)

    assert process.returncode == -signal.SIGKILL
    assert polls == []


async def test_a_program_already_ended_is_sent_nothing(polls: list[int]) -> None:
    process = await start_program("true", [], env=os.environ)
    assert await process.wait() == 0

    await stop_process(process)

    assert process.returncode == 0
    assert polls == []
