"""Shared fixtures: settings in a temporary data directory, the app over ASGI, and a real
uvicorn process on a free loopback port."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi import FastAPI

from service.cli.main import REQUEST_GRACE_S
from service.settings import Settings
from service.web.app import create_app
from tests.processes import free_port, start_process

if TYPE_CHECKING:
    from tests.pg import PostgresServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        env="test",
        data_dir=tmp_path / "data",
        restic_repository=str(tmp_path / "repo"),
        restic_password_file=tmp_path / "restic-password",
        # Backups have their own tests with a real repository; elsewhere they would only
        # add restic runs in the background.
        backups_enabled=False,
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://ers.test") as http:
        yield http


# A clean stop may take the requests' grace and then the shutdown backup's whole budget (a
# backup of five PostgreSQL components on a loaded machine took more than 20 s).
STOP_TIMEOUT_S = REQUEST_GRACE_S + Settings.model_fields["shutdown_backup_timeout_s"].default + 10


@dataclass
class ErsProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_backups(self, timeout: float = 60.0) -> None:
        """The restic repository is reached in the background; until then backups answer
        503. Polls a bounded number of times."""
        deadline = time.monotonic() + timeout
        while httpx.get(f"{self.url}/api/emergency/backups", timeout=10).status_code == 503:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the backup repository was not ready within {timeout:g} s")
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Signal the process and wait for it; past ``timeout``, kill it (its code is then
        -9, which a test asserting a clean stop reports)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return self.process.returncode


def fail_the_budget_agent_once(http: httpx.Client) -> None:
    """A real critical failure, by the service's own fault injection: the budget agent's next
    call fails with a system error, and a budget chat makes that call."""
    http.post(
        "/api/emergency/simulate-error",
        json={"component": "budget", "errorType": "system", "count": 1},
    ).raise_for_status()
    http.post("/chat", json={"message": "budget report", "userId": "t"})


def start_ers(
    workdir: Path,
    env: dict[str, str] | None = None,
    port: int | None = None,
    prefix: Sequence[str] = (),
) -> ErsProcess:
    """Start ``ers serve`` as its own process (run by ``prefix``, a command that ends by
    executing its arguments, if given) and wait until /readyz answers 200."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ERS_", "OTEL_"))},
        "ERS_ENV": "test",
        "ERS_DATA_DIR": str(workdir / "data"),
        "ERS_RESTIC_REPOSITORY": str(workdir / "repo"),
        "ERS_RESTIC_PASSWORD_FILE": str(workdir / "restic-password"),
        "ERS_BACKUPS_ENABLED": "false",
        **(env or {}),
    }
    log_path = workdir / f"ers-{port}.log"
    url = f"http://127.0.0.1:{port}"
    process = start_process(
        [
            *prefix,
            sys.executable,
            *("-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)),
        ],
        cwd=workdir,
        env=full_env,
        log_path=log_path,
        ready_url=f"{url}/readyz",
        what="ers",
    )
    return ErsProcess(url, process, log_path)


# The tokens production refuses to start without (admin, alert, intake).
PRODUCTION_TOKENS = {
    "ERS_ADMIN_TOKEN": "adm1n",
    "ERS_ALERT_TOKEN": "al3rt",
    "ERS_INTAKE_TOKEN": "int4ke",
}


def start_production_ers(workdir: Path) -> ErsProcess:
    """``ers serve`` with ERS_ENV=production, its tokens (PRODUCTION_TOKENS) and a restic
    password file only its user may read, as production requires."""
    workdir.mkdir(parents=True, exist_ok=True)
    password = workdir / "restic-password"
    password.write_text("correct horse battery staple\n")
    password.chmod(0o600)
    return start_ers(workdir, env={"ERS_ENV": "production", **PRODUCTION_TOKENS})


@contextlib.contextmanager
def backed_up_fleet(
    workdir: Path,
    database_url: str,
    *,
    schedule: bool = False,
    env: dict[str, str] | None = None,
) -> Iterator[list[ErsProcess]]:
    """Replicas ``a`` and ``b`` on ``database_url``, sharing the restic repository
    ``workdir/repo`` (its password in ``workdir/restic-password``), each waited for until it
    reaches the repository (the first creates it); the scheduled backups only with
    ``schedule``; ``env``: more settings of both. Stopped on the way out; the list outlives
    the block, for their logs."""
    env = {
        **(env or {}),
        "ERS_DATABASE_URL": database_url,
        "ERS_BACKUPS_ENABLED": "true",
        "ERS_BACKUP_SCHEDULE_ENABLED": "true" if schedule else "false",
        "ERS_RESTIC_REPOSITORY": str(workdir / "repo"),
        "ERS_RESTIC_PASSWORD_FILE": str(workdir / "restic-password"),
    }
    replicas: list[ErsProcess] = []
    try:
        for name in ("a", "b"):
            replicas.append(start_ers(workdir / name, env=env))
            replicas[-1].wait_for_backups()
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()


def run_restic(
    repository: Path, password_file: Path, *args: str, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``restic args`` on ``repository``, as a person would run it; judged by the caller."""
    return subprocess.run(
        ["restic", *args],
        cwd=cwd,
        env={
            **os.environ,
            "RESTIC_REPOSITORY": str(repository),
            "RESTIC_PASSWORD_FILE": str(password_file),
        },
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tagged_snapshots(repository: Path, password_file: Path, tag: str) -> list[dict[str, Any]]:
    """The snapshots restic lists with ``tag`` (``reason:emergency``), read without a lock;
    raises CalledProcessError when restic fails (a repository not initialised yet)."""
    listing = ("snapshots", "--json", "--no-lock", "--tag", tag)
    done = run_restic(repository, password_file, *listing, timeout=60)
    done.check_returncode()
    return list(json.loads(done.stdout or "[]") or [])


@pytest.fixture
def ers_process(tmp_path: Path) -> Iterator[ErsProcess]:
    proc = start_ers(tmp_path / "ers")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def without_ers_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ERS_* variable and no ./ers.yaml: settings as their defaults make them."""
    for key in list(os.environ):
        if key.startswith("ERS_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """Files a test made immutable (``chattr +i``, which stops root too); made mutable again
    afterwards even when the test fails."""
    files: list[Path] = []
    yield files
    if files:
        subprocess.run(["chattr", "-i", *map(str, files)], check=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole run (see tests/pg.py); fails, never skips,
    when there is none: the store tests must run against it."""
    from tests.pg import PostgresNotAvailable, postgres_for_tests

    server: PostgresServer | None = None
    problem = ""
    try:
        server = postgres_for_tests()
    except PostgresNotAvailable as exc:
        problem = str(exc)
    if server is None:
        pytest.fail(problem, pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster a test may stop and start again (an outage), removed
    afterwards."""
    from tests.pg import NOT_INSTALLED, find_bin_dir, start_cluster

    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.fail(NOT_INSTALLED, pytrace=False)
    server = start_cluster(bin_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty database on the test server, dropped afterwards."""
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        postgres_server.drop_database(url)
