"""Two ``Authorization`` headers are one credential too many: which is the caller's cannot be
told, so neither order passes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from service.settings import Settings
from tests.api.test_access import in_production, serving

RIGHT = ("Authorization", "Bearer adm1n")
WRONG = ("Authorization", "Bearer wrong")
FORCE_OPEN = "/api/emergency/circuit-breaker/budget/force-open"
BODY = {"reason": "maintenance"}


@pytest.mark.parametrize("order", ["right-first", "wrong-first"])
async def test_two_authorization_headers_are_refused_in_either_order(
    tmp_path: Path, order: str
) -> None:
    headers = [RIGHT, WRONG] if order == "right-first" else [WRONG, RIGHT]
    async with serving(in_production(tmp_path)) as http:
        for method, path in (("POST", FORCE_OPEN), ("GET", "/api/emergency/status")):
            reply = await http.request(method, path, headers=headers, json=BODY)
            assert reply.status_code == 401, f"{method} {path}: {reply.text}"
            assert "send one Authorization header" in reply.json()["detail"]
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        budget = await http.get("/api/emergency/circuit-breakers/budget", headers=[RIGHT])
        assert budget.status_code == 200, budget.text
        assert budget.json()["state"] == "closed"


async def test_the_same_token_twice_is_refused_too(settings: Settings) -> None:
    development = settings.model_copy(
        update={"env": "development", "admin_token": SecretStr("adm1n")}
    )
    async with serving(development, host="127.0.0.1") as http:
        reply = await http.post(FORCE_OPEN, headers=[RIGHT, RIGHT], json=BODY)
        assert reply.status_code == 401, reply.text
        assert "send one Authorization header" in reply.json()["detail"]
        assert (await http.post(FORCE_OPEN, headers=[RIGHT], json=BODY)).status_code == 200
