"""Shared fixtures for the restic integration tests: realistic SQLite state and a manager."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from backup import BackupConfig, BackupManager, RepositoryConfig, init_repository
from service.settings import Settings
from service.web.app import create_app
from tests.conftest import ErsProcess, start_ers

COMPONENTS = ("conversations", "budgets", "profiles", "incidents")


@contextlib.asynccontextmanager
async def backups_app(settings: Settings, **updates: Any) -> AsyncIterator[FastAPI]:
    """The app with backups on and no schedule (and ``updates``), once its repository is
    reached."""
    more = {"backups_enabled": True, "backup_schedule_enabled": False, **updates}
    application = create_app(settings.model_copy(update=more))
    async with application.router.lifespan_context(application):
        await asyncio.wait_for(application.state.runtime.backups.connected.wait(), 60)
        yield application


@contextlib.asynccontextmanager
async def asgi_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app`` from 127.0.0.1, with a backup's or a rollback's time to answer."""
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as c:
        yield c


def write_conversations(path: Path, turns: int, start: int = 0) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS conversations (id INTEGER PRIMARY KEY, user_id TEXT, "
        "role TEXT, text TEXT, created_at REAL)"
    )
    db.executemany(
        "INSERT INTO conversations (user_id, role, text, created_at) VALUES (?, ?, ?, ?)",
        [
            (f"u{i % 7}", "user" if i % 2 else "assistant", f"message {i} about meals", i)
            for i in range(start, start + turns)
        ],
    )
    db.commit()
    db.close()


def write_budgets(path: Path, amounts: dict[str, float]) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS budgets (category TEXT PRIMARY KEY, amount REAL)")
    db.executemany("INSERT OR REPLACE INTO budgets VALUES (?, ?)", amounts.items())
    db.commit()
    db.close()


def write_profiles(path: Path, users: int) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS profiles (user_id TEXT PRIMARY KEY, goal TEXT)")
    db.executemany(
        "INSERT OR REPLACE INTO profiles VALUES (?, ?)",
        [(f"u{i}", "strength") for i in range(users)],
    )
    db.commit()
    db.close()


def write_incidents(path: Path, count: int) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS incidents (id INTEGER PRIMARY KEY, kind TEXT, opened_at REAL)"
    )
    db.executemany(
        "INSERT INTO incidents (kind, opened_at) VALUES (?, ?)",
        [("agent_timeout", float(i)) for i in range(count)],
    )
    db.commit()
    db.close()


def rows(path: Path, table: str) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
    finally:
        db.close()


@pytest.fixture
def state_files(tmp_path: Path) -> dict[str, Path]:
    data = tmp_path / "data"
    data.mkdir()
    files = {name: data / f"{name}.sqlite3" for name in COMPONENTS}
    write_conversations(files["conversations"], 50)
    write_budgets(files["budgets"], {"food": 400.0, "gym": 60.0})
    write_profiles(files["profiles"], 5)
    write_incidents(files["incidents"], 3)
    return files


@pytest.fixture(scope="session")
def template_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised repository, copied per test: `restic init` alone takes seconds."""
    folder = tmp_path_factory.mktemp("template")
    config = RepositoryConfig(str(folder / "repo"), folder / "restic-password")
    asyncio.run(init_repository(config))
    return folder


@pytest.fixture
def repository_config(tmp_path: Path, template_repository: Path) -> RepositoryConfig:
    shutil.copytree(template_repository / "repo", tmp_path / "repo")
    shutil.copy2(template_repository / "restic-password", tmp_path / "restic-password")
    return RepositoryConfig(
        repository=str(tmp_path / "repo"),
        password_file=tmp_path / "restic-password",
        cache_dir=tmp_path / "restic-cache",
        command_timeout_seconds=60,
    )


@pytest.fixture
async def manager(
    tmp_path: Path, state_files: dict[str, Path], repository_config: RepositoryConfig
) -> AsyncIterator[BackupManager]:
    config = BackupConfig(components=state_files, work_dir=tmp_path / "work")
    yield await BackupManager.open(repository_config, config)


@pytest.fixture
def backups_service(tmp_path: Path) -> Iterator[ErsProcess]:
    """A real ``ers serve`` with backups on and no schedule, its repository made."""
    proc = start_ers(
        tmp_path, env={"ERS_BACKUPS_ENABLED": "true", "ERS_BACKUP_SCHEDULE_ENABLED": "false"}
    )
    proc.wait_for_backups()
    yield proc
    proc.stop()
