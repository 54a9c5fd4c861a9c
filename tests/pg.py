"""A real PostgreSQL server for the tests: Debian's binaries, a throwaway cluster.

``ERS_TEST_DATABASE_URL`` names a server that is already running (its role must be allowed
to create databases); otherwise a cluster is created in a temporary folder with Debian's
``initdb`` and started with ``pg_ctl`` on a free 127.0.0.1 port, its socket in that folder.
PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres`` user
the Debian package creates. The test role's password is written to a file for ``initdb``;
it is never on a command line.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from service.stores.postgres_migrations import Migration, migrate
from tests.conftest import free_port

TEST_URL_VARIABLE = "ERS_TEST_DATABASE_URL"
ROLE = "ers_test"
START_TIMEOUT_S = 60
NOT_INSTALLED = (
    "PostgreSQL is not installed, and the store tests must run against it: run `make test` "
    "(it installs Debian's postgresql package), or set ERS_TEST_DATABASE_URL to a server whose "
    "role may create databases"
)


class PostgresNotAvailable(RuntimeError):
    """No PostgreSQL server for the tests: neither installed nor named."""


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with ``initdb`` and ``pg_ctl``."""
    candidates = [
        path
        for path in Path("/usr/lib/postgresql").glob("*/bin")
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file()
    ]
    return max(candidates, key=lambda p: _version_key(p.parent.name), default=None)


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


@dataclass
class PostgresServer:
    """A running server: ``url`` reaches its ``postgres`` database as a role that can
    create databases. ``stop()`` only stops a cluster this helper created."""

    url: str
    work_dir: Path | None = None
    bin_dir: Path | None = None
    run_as: str | None = None

    @property
    def password(self) -> str:
        return urlsplit(self.url).password or ""

    def database_url(self, name: str) -> str:
        return urlunsplit(urlsplit(self.url)._replace(path=f"/{name}"))

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        name = f"ers_test_{secrets.token_hex(6)}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.database_url(name)

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def start(self) -> None:
        """Start (or restart after ``halt()``) a cluster this helper created."""
        work, bin_dir = self._own_cluster()
        pg_ctl = str(bin_dir / "pg_ctl")
        log = str(work / "server.log")
        timeout = str(START_TIMEOUT_S)
        _run(
            [pg_ctl, "-D", str(work / "data"), "-l", log, "-w", "-t", timeout, "start"], self.run_as
        )

    def halt(self) -> None:
        """Stop the server but keep its cluster, as an outage would."""
        work, bin_dir = self._own_cluster()
        if (work / "data" / "postmaster.pid").exists():
            pg_ctl = str(bin_dir / "pg_ctl")
            _run([pg_ctl, "-D", str(work / "data"), "-m", "fast", "-w", "stop"], self.run_as)

    def stop(self) -> None:
        """Stop the server and remove its cluster (a named server is left alone)."""
        if self.work_dir is None:
            return
        try:
            self.halt()
        finally:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _own_cluster(self) -> tuple[Path, Path]:
        if self.work_dir is None or self.bin_dir is None:
            raise RuntimeError("this server was named by ERS_TEST_DATABASE_URL; it is not ours")
        return self.work_dir, self.bin_dir


def postgres_for_tests() -> PostgresServer:
    """The server named by ERS_TEST_DATABASE_URL, else a fresh local cluster."""
    named = os.environ.get(TEST_URL_VARIABLE)
    if named:
        return PostgresServer(url=named)
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise PostgresNotAvailable(NOT_INSTALLED)
    return start_cluster(bin_dir)


def start_cluster(bin_dir: Path) -> PostgresServer:
    """initdb a cluster in a temporary folder and start it on a free loopback port."""
    run_as = "postgres" if os.geteuid() == 0 else None
    work = Path(tempfile.mkdtemp(prefix="ers-pg-"))
    server = PostgresServer(url="", work_dir=work, bin_dir=bin_dir, run_as=run_as)
    try:
        password = secrets.token_urlsafe(18)
        password_file = work / "password"
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
        if run_as is not None:
            user = pwd.getpwnam(run_as)
            for path in (work, password_file):
                os.chown(path, user.pw_uid, user.pw_gid)
        data = work / "data"
        _run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                ROLE,
                f"--pwfile={password_file}",
                # Passwords over TCP; only the socket in the private folder is trusted.
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            run_as,
        )
        password_file.unlink()
        port = free_port()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(port),
            "unix_socket_directories": f"'{work}'",
            # A throwaway cluster: durability buys nothing here and costs test time.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
        }
        with (data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        server.start()
        server.url = f"postgresql://{ROLE}:{password}@127.0.0.1:{port}/postgres"
        return server
    except BaseException:
        log = work / "server.log"
        detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        server.stop()
        if detail:
            raise RuntimeError(f"PostgreSQL did not start:\n{detail}") from None
        raise


def _run(argv: list[str], run_as: str | None) -> None:
    program = Path(argv[0]).name
    if run_as is not None:
        argv = ["runuser", "-u", run_as, "--", *argv]
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S + 30,
        stdin=subprocess.DEVNULL,
        cwd="/",
    )
    if result.returncode != 0:
        raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr[-2000:]}")


def apply_migrations(url: str, plan: Mapping[str, Sequence[Migration]]) -> list[tuple[str, int]]:
    """Run the service's (async) ``migrate`` from synchronous test code, as the service does
    at start; returns what it applied."""

    async def run() -> list[tuple[str, int]]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await migrate(conn, plan)

    # A thread of its own, so that it works whether or not an event loop runs here.
    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, run()).result()
