"""Profiles are personal data: reading or changing one takes the admin token in production,
and outside production follows the admin endpoints' rule (the token when set, else loopback
clients only)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from service.settings import Settings
from service.web.app import create_app
from tests.api.test_security import production
from tests.conftest import start_production_ers

PROFILE = {"age": 40, "weightKg": 70, "heightCm": 170, "sex": "female"}
ADMIN = {"Authorization": "Bearer adm1n"}


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


def client_of(app: FastAPI, host: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(host, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://ers.test")


async def test_production_needs_the_admin_token_for_profiles(tmp_path: Path) -> None:
    async with serving(production(tmp_path)) as app, client_of(app) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "adm1n"}):
            put = await http.put("/api/profiles/u1", json=PROFILE, headers=headers)
            assert put.status_code == 401, put.text
            assert put.headers["www-authenticate"].startswith("Bearer")
            assert "Authorization: Bearer" in put.json()["detail"] or "not valid" in put.text
            get = await http.get("/api/profiles/u1", headers=headers)
            assert get.status_code == 401, get.text
        # Nothing was written by the refused requests.
        assert await app.state.runtime.stores.profiles.get("u1") is None

        put = await http.put("/api/profiles/u1", json=PROFILE, headers=ADMIN)
        assert put.status_code == 200, put.text
        got = await http.get("/api/profiles/u1", headers=ADMIN)
        assert got.status_code == 200 and got.json()["weightKg"] == 70.0
        # The token is checked before anything else is looked at.
        missing = await http.get("/api/profiles/nobody")
        assert missing.status_code == 401


async def test_development_answers_loopback_clients_without_a_token(tmp_path: Path) -> None:
    settings = Settings(env="development", data_dir=tmp_path / "data", backups_enabled=False)
    async with serving(settings) as app:
        async with client_of(app) as http:
            assert (await http.put("/api/profiles/u1", json=PROFILE)).status_code == 200
            assert (await http.get("/api/profiles/u1")).json()["age"] == 40
        async with client_of(app, host="10.1.2.3") as http:
            far = await http.get("/api/profiles/u1")
            assert far.status_code == 403
            assert "ERS_ADMIN_TOKEN is not set" in far.json()["detail"]
            assert (await http.put("/api/profiles/u1", json=PROFILE)).status_code == 403


async def test_development_with_an_admin_token_asks_for_it(tmp_path: Path) -> None:
    settings = Settings(
        env="development",
        data_dir=tmp_path / "data",
        backups_enabled=False,
        admin_token=SecretStr("adm1n"),
    )
    async with serving(settings) as app, client_of(app) as http:
        assert (await http.get("/api/profiles/u1")).status_code == 401
        assert (await http.put("/api/profiles/u1", json=PROFILE, headers=ADMIN)).status_code == 200


@pytest.mark.parametrize("method", ["get", "put"])
async def test_the_openapi_document_lists_401_for_profiles(
    client: httpx.AsyncClient, method: str
) -> None:
    document = (await client.get("/openapi.json")).json()
    responses = document["paths"]["/api/profiles/{userId}"][method]["responses"]
    assert "401" in responses
    assert "ERS_ADMIN_TOKEN" in responses["401"]["description"]
    assert responses["401"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }


@pytest.mark.integration
def test_profiles_over_http_in_production(tmp_path: Path) -> None:
    ers = start_production_ers(tmp_path / "ers")
    try:
        url = f"{ers.url}/api/profiles/u1"
        refused = httpx.put(url, json=PROFILE, timeout=10)
        assert refused.status_code == 401, refused.text
        assert httpx.get(url, timeout=10).status_code == 401
        taken = httpx.put(url, json=PROFILE, headers=ADMIN, timeout=10)
        assert taken.status_code == 200, taken.text
        assert httpx.get(url, headers=ADMIN, timeout=10).json()["heightCm"] == 170.0
        assert "adm1n" not in ers.log()
    finally:
        ers.stop()
