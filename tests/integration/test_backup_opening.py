"""Opening the backup repository in the background: an unexpected error is told and tried
again (before: the task ended without a word, and every backup request said "connecting to
the backup repository" until a restart), and a refresh asked for while the repository is not
reached tries it again at once (before: it failed at once, for up to a minute after the
repository was put back)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import FastAPI

from backup import BackupManager
from service.settings import Settings
from service.web.app import create_app
from tests.integration.conftest import asgi_client

pytestmark = pytest.mark.integration


@pytest.fixture
def opening_fails(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """BackupManager.open raises ``error`` while it is set."""
    real = BackupManager.open.__func__  # type: ignore[attr-defined]
    state: dict[str, Any] = {"error": None, "tries": 0}

    async def opening(cls: type[BackupManager], *args: Any, **kwargs: Any) -> BackupManager:
        state["tries"] += 1
        if state["error"] is not None:
            raise state["error"]
        return await real(cls, *args, **kwargs)

    monkeypatch.setattr(BackupManager, "open", classmethod(opening))
    return state


async def started(settings: Settings) -> tuple[FastAPI, Any]:
    more = {"backups_enabled": True, "backup_schedule_enabled": False}
    application = create_app(settings.model_copy(update=more))
    return application, application.router.lifespan_context(application)


async def until(condition: Any, what: str) -> None:
    for _ in range(300):  # at most a minute
        if condition():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(what)


async def test_an_unexpected_error_opening_the_repository_is_told_and_tried_again(
    settings: Settings, opening_fails: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    opening_fails["error"] = ValueError("unexpected kwargs: process_group")
    application, lifespan = await started(settings)
    async with lifespan, asgi_client(application) as http:
        backups = application.state.runtime.backups
        await until(lambda: backups.connection_failures >= 1, "the opening never failed")
        listed = await http.get("/api/emergency/backups")
        assert "opening the repository failed: ValueError" in listed.json()["detail"], listed.text
        assert "opening the backup repository failed" in caplog.text
        opening_fails["error"] = None
        await until(backups.connected.is_set, "the opening was not tried again")
        assert (await http.get("/api/emergency/backups")).json()["available"] == 0


async def test_a_refresh_tries_a_repository_not_reached_again_at_once(
    settings: Settings, opening_fails: dict[str, Any]
) -> None:
    from backup import RepositoryMissing

    opening_fails["error"] = RepositoryMissing("the repository is gone")
    application, lifespan = await started(settings)
    async with lifespan, asgi_client(application) as http:
        # Three failures: the next try is 4 s away, then 8 s, 16 s...
        await until(lambda: opening_fails["tries"] >= 3, "the opening was not retried")
        opening_fails["error"] = None  # put back
        refreshed = await http.post("/api/emergency/backups/refresh")
        assert refreshed.status_code == 200, refreshed.text
