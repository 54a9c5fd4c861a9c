"""The README's access rules, each proved on a running app, and the OpenAPI document's
``security`` proved to say which operations take which token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from service.settings import Settings
from service.web.app import create_app
from tests.api.test_security import production

# Not on loopback: a load balancer, Prometheus or an operator's laptop on the network.
REMOTE = "10.1.2.3"
TOKENS = {"adminToken": "adm1n", "alertToken": "al3rt", "intakeToken": "int4ke"}
ADMIN = {"Authorization": "Bearer adm1n"}
ALERT = {"Authorization": "Bearer al3rt"}
INTAKE = {"Authorization": "Bearer int4ke"}
PATH_VALUES = {
    "name": "budget",
    "user_id": "u1",
    "incident_id": "INC_0000000000000_abcdef",
    "trace_id": "0" * 31 + "1",
    "backup_id": "0123abcd",
}
WEBHOOK = {
    "version": "4",
    "groupKey": "{}:{}",
    "status": "firing",
    "receiver": "ers",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "ErsAccessTest"},
            "startsAt": "2024-01-01T00:00:00Z",
            "fingerprint": "abc123",
        }
    ],
}


@asynccontextmanager
async def serving(settings: Settings, host: str = REMOTE) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(host, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://ers.test") as http:
            yield http
        alerts = getattr(app.state.runtime, "alerts", None)
        if alerts is not None:
            await alerts.drain()


def in_production(tmp_path: Path) -> Settings:
    return production(tmp_path, restic_repository=str(tmp_path / "repo"), backups_enabled=False)


async def test_production_probes_metrics_chat_and_docs_need_no_token(tmp_path: Path) -> None:
    async with serving(in_production(tmp_path)) as http:
        for path in ("/livez", "/readyz", "/metrics", "/docs", "/openapi.json"):
            reply = await http.get(path)
            assert reply.status_code == 200, f"{path}: {reply.status_code} {reply.text[:200]}"
        chat = await http.post("/chat", json={"message": "budget report", "userId": "u1"})
        assert chat.status_code == 200, chat.text


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def url_of(path: str) -> str:
    for name, value in PATH_VALUES.items():
        path = path.replace("{" + name + "}", value)
    return path


async def call(
    http: httpx.AsyncClient, method: str, path: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    body = WEBHOOK if path == "/api/emergency/alerts" else {}
    return await http.request(method, url_of(path), json=body, headers=headers or {})


def rule_of(method: str, path: str) -> str | None:
    """The README's table: the token an operation takes in production, None when open."""
    if path in ("/chat", "/livez", "/readyz"):
        return None
    if path == "/api/emergency/alerts":
        return "alertToken"
    if path == "/v1/traces":
        return "intakeToken"
    if path.startswith(("/api/emergency/", "/api/profiles/")):
        return "adminToken"
    raise AssertionError(f"{method} {path} is in no row of the README's access table")


async def test_production_answers_each_operation_as_the_readme_and_the_document_say(
    tmp_path: Path,
) -> None:
    async with serving(in_production(tmp_path)) as http:
        document = (await http.get("/openapi.json")).json()
        checked = 0
        for method, path, operation in operations(document):
            rule = rule_of(method, path)
            declared = [scheme for need in operation.get("security", []) for scheme in need]
            assert declared == ([rule] if rule else []), f"{method} {path}: security {declared}"
            if rule is None:
                continue
            refused = await call(http, method, path)
            assert refused.status_code == 401, f"{method} {path} without a token: {refused.text}"
            assert refused.headers["www-authenticate"].startswith("Bearer")
            for other, token in TOKENS.items():
                reply = await call(http, method, path, {"Authorization": f"Bearer {token}"})
                if other == rule:
                    assert reply.status_code not in (401, 403), f"{method} {path}: {reply.text}"
                else:
                    assert reply.status_code == 401, f"{method} {path} with the {other}"
            checked += 1
        # Every read and change under /api/emergency, profiles, the webhook and the intake.
        assert checked >= 25, checked


@pytest.mark.parametrize(
    "body",
    [b'{"reason": ', b'{"reason": "\xff"}', b"[" * 5000, b'{"reason": "a", "reason": "b"}'],
    ids=["cut", "utf8", "deep", "repeated-key"],
)
async def test_a_body_that_cannot_be_read_is_refused_for_its_token_first(
    tmp_path: Path, body: bytes
) -> None:
    """FastAPI decodes a JSON body before the token check runs: a caller without the token
    was told what was wrong with its body (422) instead of 401."""
    async with serving(in_production(tmp_path)) as http:
        document = (await http.get("/openapi.json")).json()
        checked = 0
        for method, path, operation in operations(document):
            rule = rule_of(method, path)
            if rule is None or "requestBody" not in operation or path == "/v1/traces":
                continue
            headers = {"Content-Type": "application/json"}
            sent = {"url": url_of(path), "content": body, "headers": headers}
            refused = await http.request(method, **sent)
            assert refused.status_code == 401, f"{method} {path}: {refused.text}"
            assert refused.headers["www-authenticate"].startswith("Bearer")
            wrong = {**headers, "Authorization": "Bearer not-it"}
            assert (await http.request(method, **{**sent, "headers": wrong})).status_code == 401
            right = {**headers, "Authorization": f"Bearer {TOKENS[rule]}"}
            told = await http.request(method, **{**sent, "headers": right})
            assert told.status_code == 422, f"{method} {path}: {told.text}"
            checked += 1
        assert checked >= 5, checked


async def test_production_reads_need_the_admin_token(tmp_path: Path) -> None:
    async with serving(in_production(tmp_path)) as http:
        for path in ("/api/emergency/status", "/api/emergency/circuit-breakers"):
            refused = await http.get(path)
            assert refused.status_code == 401
            assert "Authorization: Bearer" in refused.json()["detail"]
            assert (await http.get(path, headers=ADMIN)).status_code == 200


async def test_production_hides_fault_injection(tmp_path: Path) -> None:
    async with serving(in_production(tmp_path)) as http:
        reply = await http.post(
            "/api/emergency/simulate-error", json={"component": "budget"}, headers=ADMIN
        )
        assert reply.status_code == 404


async def test_development_reads_are_open_and_changes_answer_loopback_only(
    tmp_path: Path, settings: Settings
) -> None:
    development = settings.model_copy(update={"env": "development"})
    async with serving(development) as http:
        assert (await http.get("/api/emergency/status")).status_code == 200
        for method, path in (
            ("POST", "/api/emergency/circuit-breaker/budget/reset"),
            ("POST", "/api/emergency/alerts"),
            ("POST", "/v1/traces"),
            ("GET", "/api/profiles/u1"),
        ):
            reply = await call(http, method, path)
            assert reply.status_code == 403, f"{method} {path}: {reply.text}"
            assert "loopback" in reply.json()["detail"]
    async with serving(development, host="127.0.0.1") as http:
        reset = await call(http, "POST", "/api/emergency/circuit-breaker/budget/reset")
        assert reset.status_code == 200, reset.text


async def test_development_with_a_token_set_asks_for_it(tmp_path: Path, settings: Settings) -> None:
    development = settings.model_copy(
        update={"env": "development", "admin_token": SecretStr("adm1n")}
    )
    async with serving(development, host="127.0.0.1") as http:
        # Reads stay open outside production, even with the token set.
        assert (await http.get("/api/emergency/status")).status_code == 200
        reset = "/api/emergency/circuit-breaker/budget/reset"
        assert (await call(http, "POST", reset)).status_code == 401
        assert (await call(http, "POST", reset, ADMIN)).status_code == 200
        # The token is asked for before anything else is said of the request.
        repeated = "/api/emergency/simulate-error?component=budget&component=nutrition"
        assert (await http.delete(repeated)).status_code == 401
        assert (await http.delete(repeated, headers=ADMIN)).status_code == 422


async def test_development_with_a_blank_token_keeps_changes_to_loopback(
    settings: Settings,
) -> None:
    """ERS_ADMIN_TOKEN= (an unset compose variable) made every change answer 401: no
    request can present an empty token. Blank is unset: the loopback rule applies."""
    values = {**settings.model_dump(), "env": "development", "admin_token": " "}
    async with serving(Settings(**values), host="127.0.0.1") as http:
        reset = await call(http, "POST", "/api/emergency/circuit-breaker/budget/reset")
        assert reset.status_code == 200, reset.text


@pytest.mark.parametrize("env", ["test", "production"])
async def test_the_document_declares_the_bearer_schemes(
    tmp_path: Path, settings: Settings, env: str
) -> None:
    chosen = in_production(tmp_path) if env == "production" else settings
    async with serving(chosen) as http:
        document = (await http.get("/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert set(schemes) == set(TOKENS)
    assert all(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
    reads = document["paths"]["/api/emergency/status"]["get"]
    reset = document["paths"]["/api/emergency/circuit-breaker/{name}/reset"]["post"]
    if env == "production":
        assert reads["security"] == [{"adminToken": []}]
        assert reset["security"] == [{"adminToken": []}]
    else:
        # Reads do not look at a token; changes take one, or none from loopback.
        assert "security" not in reads
        assert reset["security"] == [{"adminToken": []}, {}]
