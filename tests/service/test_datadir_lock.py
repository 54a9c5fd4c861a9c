"""The data directory lock: one holder at a time, named in every refusal, gone with its
holder; offline reads go on beside it, offline changes do not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi import FastAPI

from service.fleet.datadir_lock import (
    LOCK_FILE_NAME,
    OFFLINE_ADVICE,
    DataDirInUse,
    DataDirLock,
    offline_lock,
)
from service.settings import Settings, SettingsError
from service.web.app import create_app


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    first = DataDirLock.acquire(tmp_path / "data", "ers serve")
    try:
        with pytest.raises(DataDirInUse) as refused:
            DataDirLock.acquire(tmp_path / "data", "ers serve")
        assert f"ers serve (pid {os.getpid()} on " in str(refused.value)
    finally:
        first.release()
    DataDirLock.acquire(tmp_path / "data", "ers serve").release()
    # The file stays (deleting it would let two processes lock two different files).
    assert (tmp_path / "data" / LOCK_FILE_NAME).exists()


def test_a_lock_file_without_a_holder_blocks_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / LOCK_FILE_NAME).write_text("ers serve (pid 999999 on elsewhere)\n")
    with offline_lock(data, mutating=True) as owned:
        assert owned is True


def test_offline_changes_refuse_and_reads_go_on_beside_a_holder(tmp_path: Path) -> None:
    service = DataDirLock.acquire(tmp_path, "ers serve")
    try:
        with pytest.raises(DataDirInUse) as refused, offline_lock(tmp_path, mutating=True):
            pytest.fail("an offline change ran beside the service")
        assert f"pid {os.getpid()}" in str(refused.value)
        assert OFFLINE_ADVICE in str(refused.value)
        with offline_lock(tmp_path, mutating=False) as owned:
            assert owned is False  # the service's working files are not the reader's
    finally:
        service.release()


async def test_a_second_app_on_the_same_data_directory_does_not_start(
    app: FastAPI, settings: Settings
) -> None:
    second = create_app(settings)
    # A setting that cannot run (its data directory in use): ers serve says it in one line.
    with pytest.raises(SettingsError, match="refusing to start"):
        async with second.router.lifespan_context(second):
            pytest.fail("two services shared one data directory")
    assert app.state.runtime is not None  # the first one runs on


async def test_the_lock_goes_with_the_lifespan(settings: Settings) -> None:
    for _ in range(2):
        application = create_app(settings)
        async with application.router.lifespan_context(application):
            with pytest.raises(DataDirInUse):
                DataDirLock.acquire(settings.data_dir, "ers backup --offline")
    DataDirLock.acquire(settings.data_dir, "ers backup --offline").release()
