"""Every endpoint against hostile inputs: each gets its one expected status, a JSON reply with
a ``detail`` for client errors, never a stack trace, and the service keeps answering chats."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from google.rpc.status_pb2 import Status as RpcStatus
from starlette.types import ASGIApp

from service.settings import Settings
from service.web.app import create_app
from tests.api.hostile_cases import CASES, ROLLBACK_WITH_BACKUPS_CASES, Case
from tests.api.observed_statuses import StatusRecorder
from tests.api.test_security import production
from tests.conftest import ROOT

PLAIN_CHAT = {"message": "plan my meals", "userId": "u1"}


async def _chunks(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def send(client: httpx.AsyncClient, case: Case) -> httpx.Response:
    headers = dict(case.headers)
    if case.content_type:
        headers["content-type"] = case.content_type
    content = _chunks(case.body) if case.chunked and case.body else case.body
    try:
        return await client.request(case.method, case.url, content=content, headers=headers)
    except Exception as exc:
        # The ASGI transport re-raises what escapes the app; a server would log it as a crash
        # of the request, whatever reply had already gone out.
        raise AppRaised(f"{case.id}: the app raised {type(exc).__name__}: {exc}") from exc


class AppRaised(AssertionError):
    """An exception escaped the application instead of becoming a reply."""


def excerpt(reply: httpx.Response) -> str:
    return reply.text[:300].replace("\n", " ")


def check_reply(case: Case, reply: httpx.Response) -> None:
    assert reply.status_code == case.status, (
        f"{case.id}: {case.method} {case.url[:120]} answered {reply.status_code}, "
        f"expected {case.status}: {excerpt(reply)}"
    )
    assert "Traceback" not in reply.text, f"{case.id}: the reply carries a stack trace"
    if reply.is_redirect:
        return
    # OTLP/HTTP answers a protobuf request's error with a protobuf google.rpc.Status.
    otlp = case.route == "/v1/traces" and case.content_type == "application/x-protobuf"
    kind = "application/x-protobuf" if otlp and reply.status_code >= 400 else "application/json"
    assert reply.headers.get("content-type", "").startswith(kind), (
        f"{case.id}: a {reply.status_code} must be {kind}: {excerpt(reply)}"
    )
    if reply.status_code >= 400:
        detail = RpcStatus.FromString(reply.content).message if otlp else reply.json()["detail"]
        assert isinstance(detail, str) and detail, f"{case.id}: no detail: {excerpt(reply)}"
        if case.detail is not None:
            assert case.detail in detail, f"{case.id}: {case.detail!r} not in {detail!r}"


async def assert_still_serving(client: httpx.AsyncClient, after: str) -> None:
    reply = await client.post("/chat", json=PLAIN_CHAT)
    assert reply.status_code == 200, f"after {after}, /chat answered {reply.status_code}"


async def settle(app: FastAPI) -> None:
    """Let work an accepted alert started in the background finish before the app stops.

    The table is about how requests are answered; stopping with that work still in flight is
    a shutdown question with its own test (see test_shutdown_right_after_an_alert).
    """
    alerts = getattr(app.state.runtime, "alerts", None)
    drain = getattr(alerts, "drain", None)
    if drain is not None:
        await drain()


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_hostile_input_gets_its_status(
    app: FastAPI, client: httpx.AsyncClient, case: Case
) -> None:
    try:
        reply = await send(client, case)
        check_reply(case, reply)
        await assert_still_serving(client, case.id)
    finally:
        await settle(app)


def test_case_ids_are_unique() -> None:
    repeated = [name for name, n in Counter(case.id for case in CASES).items() if n > 1]
    assert not repeated, f"case ids used more than once: {repeated}"


async def test_every_documented_operation_has_hostile_rows(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    documented = {
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method in operations
        if method in ("get", "put", "post", "delete", "patch")
    }
    covered = {case.operation for case in CASES}
    uncovered = sorted(documented - covered)
    assert not uncovered, (
        "operations in /openapi.json without a row in tests/api/hostile_cases.py: "
        + ", ".join(uncovered)
    )


async def test_the_whole_table_in_one_process_leaves_it_serving(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    # One app takes every row in turn, so damage that only builds up (a poisoned store, a
    # leaked lock, a wedged breaker) shows here even when each row alone passes.
    server_errors = []
    try:
        for case in CASES:
            try:
                reply = await send(client, case)
            except AppRaised as raised:
                server_errors.append(str(raised))
                continue
            if reply.status_code >= 500 and reply.status_code != case.status:
                server_errors.append(f"{case.id}: {reply.status_code} {excerpt(reply)}")
        assert not server_errors, "server errors:\n" + "\n".join(server_errors)
        await assert_still_serving(client, "the whole table")
        assert (await client.get("/readyz")).status_code == 200
    finally:
        await settle(app)


def _settings_for(access: str, settings: Settings, tmp_path: Path) -> Settings:
    if access == "production-without-token":
        return production(
            tmp_path,
            data_dir=settings.data_dir,
            restic_repository=settings.restic_repository,
            backups_enabled=False,
        )
    if access == "development-remote-client":
        return settings.model_copy(update={"env": "development"})
    return settings


@pytest.mark.parametrize(
    "access,client_host",
    [
        ("test-loopback", "127.0.0.1"),
        # No token set: the protected endpoints answer loopback clients only (403).
        ("development-remote-client", "10.1.2.3"),
        # Every token set, none sent (401); fault injection is not mounted.
        ("production-without-token", "10.1.2.3"),
    ],
)
async def test_every_status_observed_is_declared_for_its_operation(
    settings: Settings, tmp_path: Path, access: str, client_host: str
) -> None:
    # The whole table against one app, each reply noted under the operation it reached:
    # a client reading /openapi.json must find there every status it can be answered.
    application = create_app(_settings_for(access, settings, tmp_path))
    recorder = StatusRecorder(application, application.openapi())
    transport = httpx.ASGITransport(app=recorder, client=(client_host, 40000))
    async with application.router.lifespan_context(application):
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://ers.test") as http:
                for case in CASES:
                    await send(http, case)
        finally:
            await settle(application)
    assert recorder.requests == len(CASES)
    reached = {operation for operation in recorder.seen if operation is not None}
    assert reached == recorder.documented(), "operations no row reached"
    undeclared = recorder.undeclared()
    assert not undeclared, "answered but not in /openapi.json: " + ", ".join(undeclared)


@pytest.fixture
async def backup_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app with backups on and its real restic repository connected, so that a
    rollback body is validated and acted on rather than answered 503."""
    settings = settings.model_copy(
        update={"backups_enabled": True, "backup_schedule_enabled": False}
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        await asyncio.wait_for(application.state.runtime.backups.connected.wait(), 60)
        yield application


def client_of(app: ASGIApp) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://ers.test", timeout=120)


@pytest.fixture
async def backup_client(backup_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(backup_app) as http:
        yield http


@pytest.mark.integration
async def test_rollback_rows_with_a_connected_repository(backup_app: FastAPI) -> None:
    # One app for every row: each restic repository takes seconds to create.
    recorder = StatusRecorder(backup_app, backup_app.openapi())
    async with client_of(recorder) as http:
        for case in ROLLBACK_WITH_BACKUPS_CASES:
            check_reply(case, await send(http, case))
        await assert_still_serving(http, "the rollback rows")
    undeclared = recorder.undeclared()
    assert not undeclared, "answered but not in /openapi.json: " + ", ".join(undeclared)


async def _food_left(http: httpx.AsyncClient) -> str:
    reply = await http.post("/chat", json={"message": "budget report", "userId": "ann"})
    return reply.json()["response"]


@pytest.mark.integration
@pytest.mark.parametrize("confirm", ["yes", "true", 1])
async def test_a_confirm_that_is_not_a_json_true_rolls_nothing_back(
    backup_client: httpx.AsyncClient, confirm: object
) -> None:
    http = backup_client
    await http.post("/chat", json={"message": "set my food budget to $400", "userId": "ann"})
    created = await http.post("/api/emergency/backups/create", json={"type": "budgets"})
    assert created.status_code == 200, created.text
    await http.post("/chat", json={"message": "spent $300 on groceries", "userId": "ann"})
    assert "$100.00 left" in await _food_left(http)

    reply = await http.post(
        "/api/emergency/rollback",
        json={
            "backupId": created.json()["backupId"],
            "confirm": confirm,
            "reason": "x",
            "components": ["budgets"],
        },
    )

    assert reply.status_code == 422, reply.text
    assert "confirm: must be true (a JSON boolean" in reply.json()["detail"]
    assert "$100.00 left" in await _food_left(http)  # the expense is still there
    listed = (await http.get("/api/emergency/backups")).json()["backups"]
    assert [s["reason"] for s in listed] == ["manual"]  # no pre-rollback safety snapshot


SHUTDOWN_AFTER_ALERT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    import httpx
    from service.web.app import create_app
    from service.settings import Settings
    from tests.api.hostile_cases import ALERT, ALERTS, WEBHOOK

    # Several alerts at once, so several background writers are in flight at the stop.
    PAYLOAD = {**WEBHOOK, "alerts": [{**ALERT, "fingerprint": f"f{i}"} for i in range(8)]}

    async def once(tmp: Path) -> None:
        app = create_app(Settings(
            env="test", data_dir=tmp / "data", restic_repository=str(tmp / "repo"),
            restic_password_file=tmp / "restic-password", backups_enabled=False,
        ))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://ers.test") as c:
                assert (await c.post(ALERTS, json=PAYLOAD)).status_code == 200

    async def main(base: Path, rounds: int) -> None:
        for n in range(rounds):
            await once(base / str(n))

    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
    """
)


def test_shutdown_right_after_an_alert(tmp_path: Path) -> None:
    # An accepted alert is acted on in the background; a stop that comes before that work
    # ends (a deploy, a SIGTERM) must still be clean. It runs in its own process because a
    # store closed under a writer can kill the interpreter, not just fail a test.
    done = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", SHUTDOWN_AFTER_ALERT, str(tmp_path), "20"],
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("ERS_", "OTEL_"))},
            "PYTHONPATH": str(ROOT),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    # The first thread in a fault dump is the one that crashed: show it, not the end.
    fatal = done.stderr.find("Fatal Python error")
    dump = done.stderr[fatal : fatal + 2500] if fatal >= 0 else done.stderr[-2500:]
    assert done.returncode == 0, (
        f"twenty start-alert-stop rounds ended with exit code {done.returncode}:\n{dump}"
    )
