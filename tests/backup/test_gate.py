"""The start gate: an exclude file that exists only once the staged folder is final."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from backup.errors import ResticCommandFailed, WrongPassword
from backup.gate import EarlyRun, StartGate, start_gate
from backup.process import run_program

# Stands in for restic: gets ready, reads its exclude file (failing without it, naming the
# path as restic does), then reads the staged file it was started to back up.
FAKE_RESTIC = """
import sys, time
time.sleep(float(sys.argv[3]))
try:
    open(sys.argv[1]).read()
except FileNotFoundError:
    sys.exit(f"open {sys.argv[1]}: no such file or directory")
print(open(sys.argv[2]).read())
"""


async def fake_restic(gate: StartGate, staged: Path, ready_after: float) -> str:
    output = await run_program(
        sys.executable,
        ["-c", FAKE_RESTIC, str(gate.path), str(staged), str(ready_after)],
        env=os.environ,
        timeout=20,
    )
    if output.exit_code != 0:
        raise ResticCommandFailed(f"restic exited with code 1: {output.stderr.strip()}")
    return output.stdout.strip()


async def test_the_gate_exists_only_once_opened_and_is_empty(tmp_path: Path) -> None:
    with start_gate(tmp_path) as gate:
        assert gate.restic_args() == ["--exclude-file", str(gate.path)]
        assert not gate.path.exists()
        gate.open()
        assert gate.path.read_bytes() == b""
    assert not gate.path.parent.exists()


async def test_a_command_that_gets_ready_after_the_copies_reads_the_final_folder(
    tmp_path: Path,
) -> None:
    staged = tmp_path / "staged"
    with start_gate(tmp_path / "scratch") as gate:
        early = EarlyRun(gate, lambda g: fake_restic(g, staged, ready_after=0.5))
        staged.write_text("final")  # the copies, made while the command gets ready
        assert await early.finish() == "final"


async def test_a_command_ready_before_the_copies_fails_at_the_gate_and_reads_nothing(
    tmp_path: Path,
) -> None:
    staged = tmp_path / "staged"
    staged.write_text("half-copied")
    with start_gate(tmp_path / "scratch") as gate:
        early = EarlyRun(gate, lambda g: fake_restic(g, staged, ready_after=0.0))
        await asyncio.sleep(0.5)  # the copies take longer than the command's start
        assert await early.finish() is None  # missed: the caller runs restic again
        assert not gate.path.exists()


async def test_other_failures_are_not_taken_for_a_missed_gate(tmp_path: Path) -> None:
    async def wrong_password(gate: StartGate) -> str:
        raise WrongPassword("the password does not open the repository")

    with start_gate(tmp_path) as gate:
        assert gate.missed_by(ResticCommandFailed(f"open {gate.path}: no such file"))
        early = EarlyRun(gate, wrong_password)
        with pytest.raises(WrongPassword):
            await early.finish()


async def test_a_command_that_failed_before_the_gate_opened_is_run_again(
    tmp_path: Path,
) -> None:
    async def locked(gate: StartGate) -> str:
        raise ResticCommandFailed("restic exited with code 1: unable to create lock")

    with start_gate(tmp_path) as gate:
        early = EarlyRun(gate, locked)
        await asyncio.sleep(0)  # it fails while the copies are still being made
        assert await early.finish() is None and not gate.path.exists()


async def test_abandoning_stops_the_command_and_keeps_the_gate_shut(tmp_path: Path) -> None:
    staged = tmp_path / "staged"
    with start_gate(tmp_path / "scratch") as gate:
        early = EarlyRun(gate, lambda g: fake_restic(g, staged, ready_after=5.0))
        await asyncio.sleep(0.2)
        await early.abandon()
        assert early.task.done() and not gate.path.exists()
        await early.abandon()  # harmless twice
