"""A restic stopped by a signal says so: SIGINT (a terminal's Ctrl-C) and SIGTERM (a service
manager stopping ERS and every process of its unit) are an interruption, not a failure of the
repository, so a restore drill stopped that way is no failed drill; SIGKILL is a failure."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from backup.errors import Interrupted, PgRestoreFailed, ResticCommandFailed, ResticInterrupted
from backup.pg_tools import PgConnection, PgTools, run_pg_program
from backup.restic import Restic
from service.backups.jobs import drill

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed")


async def child_named(name: str = "restic", limit_s: float = 30.0) -> psutil.Process:
    deadline = time.monotonic() + limit_s
    while True:
        found = [p for p in psutil.Process().children(recursive=True) if p.name() == name]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"{name} did not start"
        await asyncio.sleep(0.05)


async def stopped_by(
    sig: signal.Signals,
    program: str,
    start: Callable[[int], Awaitable[object]],
    settle_s: float = 0.0,
) -> BaseException:
    """What ``start(stdin)`` raises when ``program``, which it starts waiting for its input
    on ``stdin`` (a pipe nobody writes to), gets ``sig``."""
    reading, writing = os.pipe()
    try:
        running = asyncio.ensure_future(start(reading))
        child = await child_named(program)
        await asyncio.sleep(settle_s)
        child.send_signal(sig)
        with pytest.raises(Exception) as raised:  # noqa: PT011 - the callers judge it
            await running
    finally:
        os.close(reading)
        os.close(writing)
    return raised.value


@pytest.mark.parametrize(
    ("sig", "expected", "words"),
    [
        (signal.SIGINT, ResticInterrupted, "restic was stopped by SIGINT before it finished"),
        (signal.SIGTERM, ResticInterrupted, "restic was stopped by SIGTERM before it finished"),
        (signal.SIGKILL, ResticCommandFailed, "restic was killed by SIGKILL before it finished"),
    ],
)
async def test_a_restic_stopped_by_a_signal_is_named_by_it(
    tmp_path: Path, sig: signal.Signals, expected: type, words: str
) -> None:
    password = tmp_path / "password"
    password.write_text("pw\n")
    restic = Restic(str(tmp_path / "repo"), password, cache_dir=tmp_path / "cache")
    await restic.init()
    raised = await stopped_by(
        sig,
        "restic",
        lambda stdin: restic.backup_stdin(stdin, "state.db", tags=["t"]),
        settle_s=0.5,  # restic has installed its SIGINT handler
    )
    assert type(raised) is expected
    assert str(raised).startswith(words), str(raised)


async def test_a_drill_stopped_by_a_signal_is_no_verdict_and_stays_due(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def stopped() -> Any:
        raise ResticInterrupted("restic was stopped by SIGTERM before it finished")

    backups = SimpleNamespace(
        last_drill_at=None,
        last_drill_ok=None,
        last_drill_problem=None,
        require=lambda: SimpleNamespace(verify_latest=stopped),
    )
    with caplog.at_level(logging.INFO, logger="ers.backups"):
        assert await drill(backups) is False  # type: ignore[arg-type]
    assert (backups.last_drill_at, backups.last_drill_ok, backups.last_drill_problem) == (
        None,
        None,
        None,
    )
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "restore drill did not finish: restic was stopped by SIGTERM" in caplog.text


async def test_a_pg_restore_stopped_by_a_signal_is_an_interruption() -> None:
    """On PostgreSQL a drill restores with pg_restore, which a service manager stops with
    ERS (SIGTERM): its exit was a failed restore, and the drill a failed one. (SIGINT is
    left out: a test run in the background passes its programs SIGINT ignored.)"""
    sig = signal.SIGTERM
    tools = PgTools.find()
    connection = PgConnection.from_url("postgresql://ers@127.0.0.1:1/nowhere")
    raised = await stopped_by(
        sig,
        "pg_restore",
        lambda stdin: run_pg_program(
            tools.pg_restore,
            ["--dbname", connection.conninfo],
            connection=connection,
            failure=PgRestoreFailed,
            doing="restoring into a scratch database",
            timeout=60,
            stdin=stdin,
        ),
    )
    assert isinstance(raised, Interrupted), raised
    assert str(raised) == (
        f"pg_restore was stopped by {sig.name} before it finished restoring into a scratch database"
    )
