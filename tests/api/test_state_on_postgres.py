"""The whole service with ERS_DATABASE_URL set: chat, profiles, health and the system test
on a real PostgreSQL server, and file backups cleanly off."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from service.settings import Settings
from service.stores import Stores
from service.stores.postgres import PostgresStore


@pytest.fixture
def settings(tmp_path: Path, pg_url: str) -> Settings:
    # Backups of the database are tested with real processes (tests/integration).
    return Settings(
        env="test",
        data_dir=tmp_path / "data",
        restic_repository=str(tmp_path / "repo"),
        restic_password_file=tmp_path / "restic-password",
        database_url=pg_url,
        backups_enabled=False,
    )


async def test_chat_turns_and_profiles_land_in_postgres(
    client: httpx.AsyncClient, app: FastAPI, pg_url: str
) -> None:
    assert all(
        isinstance(s, PostgresStore) for s in app.state.runtime.stores.by_component().values()
    )
    reply = await client.post(
        "/chat", json={"message": "I am 30, 80 kg, 180 cm, male, moderately active", "userId": "u7"}
    )
    assert reply.status_code == 200
    plan = await client.post("/chat", json={"message": "plan my meals", "userId": "u7"})
    assert "2759 kcal" in plan.json()["response"]
    assert (await client.get("/api/profiles/u7")).json()["weightKg"] == 80.0
    with psycopg.connect(pg_url) as conn:
        turns = conn.execute(
            "SELECT count(*) FROM ers_conversations.turns WHERE user_id = 'u7'"
        ).fetchone()
        age = conn.execute("SELECT age FROM ers_profiles.profiles WHERE user_id = 'u7'").fetchone()
    assert turns == (2,) and age == (30,)


async def test_health_readiness_and_system_test_see_the_database(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/readyz")).status_code == 200
    health = (await client.get("/api/emergency/health")).json()
    assert health["checks"]["stores"]["status"] == "healthy"
    result = (await client.post("/api/emergency/test-system")).json()
    store_steps = [step for step in result["steps"] if step["step"].startswith("store:")]
    assert len(store_steps) == 4 and all(step["passed"] for step in store_steps)


def test_the_choice_of_postgres_is_logged_without_the_password(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ers.stores")
    Stores.from_settings(settings)
    assert settings.database_url is not None
    password = urlsplit(settings.database_url.get_secret_value()).password
    assert password
    assert "component stores on PostgreSQL at postgresql://ers_test@127.0.0.1" in caplog.text
    assert password not in caplog.text
