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
    reading, writing = os.pipe()  # restic waits for its input until the signal
    try:
        backup = asyncio.ensure_future(restic.backup_stdin(reading, "state.db", tags=["t"]))
        child = await child_named()
        await asyncio.sleep(0.5)  # restic has installed its SIGINT handler
        child.send_signal(sig)
        with pytest.raises(expected) as raised:
            await backup
    finally:
        os.close(reading)
        os.close(writing)
    assert type(raised.value) is expected
    assert str(raised.value).startswith(words), str(raised.value)


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
    reading, writing = os.pipe()  # pg_restore waits for the dump until the signal
    try:
        restore = asyncio.ensure_future(
            run_pg_program(
                tools.pg_restore,
                ["--dbname", connection.conninfo],
                connection=connection,
                failure=PgRestoreFailed,
                doing="restoring into a scratch database",
                timeout=60,
                stdin=reading,
            )
        )
        child = await child_named("pg_restore")
        child.send_signal(sig)
        with pytest.raises(Interrupted) as raised:
            await restore
    finally:
        os.close(reading)
        os.close(writing)
    assert str(raised.value) == (
        f"pg_restore was stopped by {sig.name} before it finished restoring into a scratch database"
    )
