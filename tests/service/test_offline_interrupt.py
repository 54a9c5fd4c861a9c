"""Ctrl-C at an offline rollback before it began (its manager still opening): before, the
command exited 130 without a word, where one under way says what became of the data."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from service.cli import backup_offline
from service.cli.output import CliError


async def test_a_rollback_interrupted_before_it_began_says_nothing_was_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "budgets.sqlite3").touch()  # a SQLite service's directory
    for name, value in {
        "ERS_DATA_DIR": str(data),
        "ERS_RESTIC_REPOSITORY": str(tmp_path / "repo"),
        "ERS_RESTIC_PASSWORD_FILE": str(tmp_path / "password"),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ERS_DATABASE_URL", raising=False)
    opening = asyncio.Event()

    async def slow_manager(owns_data_dir: bool) -> None:
        opening.set()
        await asyncio.sleep(3600)  # restic reading the repository's list

    monkeypatch.setattr(backup_offline, "_offline_manager", slow_manager)
    args = argparse.Namespace(
        action="rollback", backup_id="5b02cf1f", reason="r", components=None, yes=True
    )
    command = asyncio.create_task(backup_offline.run_offline(args, progress=None))  # type: ignore[arg-type]
    await asyncio.wait_for(opening.wait(), 10)
    command.cancel()  # what asyncio.run does with the main task at Ctrl-C
    with pytest.raises(CliError) as refused:
        await command
    assert refused.value.code == 130
    assert str(refused.value) == (
        "the rollback was interrupted before it began: nothing was changed"
    )
