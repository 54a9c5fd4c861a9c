"""PostgreSQL's client programs (pg_dump, pg_restore, psql): where they are, how they reach the
server without a password on their command line, and running one with a timeout.

The password travels in the programs' environment (`PGPASSWORD`), the passphrase of a client
key (`sslpassword`, for which libpq reads no variable) in a service file only the program can
open, the rest of the URL as a libpq conninfo string in `--dbname`: a command line is read by
every user of the host (`ps`). Messages name the server as host:port/database and never carry
either.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backup.errors import (
    BackupError,
    Interrupted,
    PgRestoreFailed,
    PgToolNotInstalled,
    stderr_tail,
    stopping_signal,
)
from backup.process import CANNOT_START, inherited_environment, start_program, stop_process

DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")
TOOLS = ("pg_dump", "pg_restore", "psql")
STOP_GRACE_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 10
APPLICATION_NAME = "ers-backup"
# The service of the file that carries a client key's passphrase to a program.
KEY_SERVICE = "ers-client-key"


@dataclass(frozen=True)
class PgTools:
    pg_dump: str
    pg_restore: str
    psql: str

    @classmethod
    def find(cls, bin_dir: Path | None = None) -> PgTools:
        """The programs in `bin_dir`; else in Debian's newest /usr/lib/postgresql/<v>/bin
        (what the /usr/bin wrappers would pick, and dump and restore must be at least as new
        as the server); else on PATH."""
        folder = bin_dir or _newest_debian_bin_dir()
        found: dict[str, str] = {}
        for tool in TOOLS:
            path = str(folder / tool) if folder else shutil.which(tool)
            if path is None or not os.access(path, os.X_OK):
                where = str(folder) if folder else f"{DEBIAN_PG_ROOT}/*/bin or on PATH"
                raise PgToolNotInstalled(
                    f"{tool} was not found in {where}: install the PostgreSQL client programs "
                    "of the server's major version or newer (apt install postgresql-client)"
                )
            found[tool] = path
        return cls(**found)


def _newest_debian_bin_dir() -> Path | None:
    folders = [p for p in DEBIAN_PG_ROOT.glob("*/bin") if (p / "pg_dump").is_file()]
    return max(folders, key=lambda p: _version_key(p.parent.name), default=None)


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


@dataclass(frozen=True)
class PgConnection:
    """One database reached through a URL or conninfo string, split for the programs."""

    url: str = field(repr=False)  # with the password: for psycopg in this process only
    conninfo: str  # without the password: for --dbname
    password: str | None = field(repr=False)
    location: str  # host:port/database, fit for messages
    ssl_password: str | None = field(default=None, repr=False)  # a client key's passphrase

    @classmethod
    def from_url(cls, url: str) -> PgConnection:
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error:
            raise BackupError(
                "the PostgreSQL URL does not parse: write it as "
                "postgresql://user:password@host:port/database"
            ) from None
        password = params.pop("password", None)
        ssl_password = params.pop("sslpassword", None)
        if ssl_password:
            if "service" in params:
                raise BackupError(
                    "the PostgreSQL URL gives both sslpassword and service, which ERS uses to "
                    "hand the passphrase to pg_dump: put sslpassword in that service's entry"
                )
            params["service"] = KEY_SERVICE
        params.setdefault("application_name", APPLICATION_NAME)
        host = params.get("host") or "local socket"
        location = f"{host}:{params.get('port') or 5432}/{params.get('dbname') or '(default)'}"
        return cls(
            url=url,
            conninfo=make_conninfo(**params),  # type: ignore[arg-type]
            password=str(password) if password else None,
            location=location,
            ssl_password=str(ssl_password) if ssl_password else None,
        )

    def database(self, name: str) -> PgConnection:
        """The same server and role, another database."""
        return PgConnection.from_url(make_conninfo(self.url, dbname=name))

    @contextlib.contextmanager
    def program_env(self) -> Iterator[tuple[dict[str, str], tuple[int, ...]]]:
        """The environment of a client program, and the descriptors it must inherit: the
        passphrase goes in a file in memory (a memfd) that the program's libpq opens as its
        service file, and that is gone with the last program holding it."""
        env = inherited_environment()
        if self.password:
            env["PGPASSWORD"] = self.password
        if not self.ssl_password:
            yield env, ()
            return
        fd = os.memfd_create("ers-pg-service")
        try:
            os.write(fd, f"[{KEY_SERVICE}]\nsslpassword={self.ssl_password}\n".encode())
            env["PGSERVICEFILE"] = f"/dev/fd/{fd}"
            yield env, (fd,)
        finally:
            os.close(fd)

    def scrub(self, text: str) -> str:
        text = " ".join(text.split())
        for secret in (self.password, self.ssl_password):
            text = text.replace(secret, "***") if secret else text
        return text

    async def connect(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        return await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
        )

    def explain(self, exc: psycopg.Error) -> str:
        """A psycopg failure in one line, without the password."""
        primary = getattr(exc.diag, "message_primary", None) or str(exc) or type(exc).__name__
        return self.scrub(str(primary).strip().splitlines()[0] if primary else "")

    async def execute(
        self,
        statement: sql.Composable | str,
        doing: str,
        params: Sequence[object] | None = None,
        *,
        failure: type[BackupError] = PgRestoreFailed,
    ) -> list[tuple[object, ...]]:
        """Run one statement on a connection of its own and return its rows (none when it
        returns none); a failure raises `failure` naming what it was `doing`, without the
        password."""
        try:
            async with await self.connect() as conn:
                cursor = await conn.execute(statement, params)
                return await cursor.fetchall() if cursor.description is not None else []
        except psycopg.Error as exc:
            raise failure(f"{doing} at {self.location} failed: {self.explain(exc)}") from None

    async def schema_exists(self, name: str) -> bool:
        """Raises psycopg.Error when the server cannot be asked: not knowing is not "no"."""
        async with await self.connect() as conn:
            cursor = await conn.execute(
                "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s", (name,)
            )
            return await cursor.fetchone() is not None


# What libpq, pg_dump and pg_restore say, and what a person should do about it.
_ADVICE = (
    (r"password authentication failed", "check the password in ERS_DATABASE_URL"),
    (
        r"no password supplied",
        "ERS_DATABASE_URL gives no password for this database: give it in the URL, or in a "
        "line of the file its passfile names whose database is * (test rollbacks and drills "
        "restore into scratch databases beside it)",
    ),
    (r'(database|role) "[^"]*" does not exist', "check the names in ERS_DATABASE_URL"),
    (r"no matching schemas were found", "start ERS once on this database to create it"),
    (r"connection refused", "check that the server is running, and its host and port"),
    (r"connection option|invalid connection", "fix the options in ERS_DATABASE_URL"),
    (r"could not translate host name", "check the host name in ERS_DATABASE_URL"),
    (r"server version mismatch", "install client programs at least as new as the server"),
    (r"permission denied", "grant the ERS role access to the component's schema"),
    (
        r"could not obtain lock|canceling statement due to (statement|lock) timeout",
        "a schema change or a long transaction holds the tables: retry when it has ended",
    ),
    (r"no space left on device", "free disk space on the database server"),
    (
        r"could not read from input file|input file appears to be a text|did not find magic",
        "the dump in that snapshot is incomplete or damaged: run restic check --read-data, "
        "or pick another snapshot",
    ),
)


def advice_for(stderr: str) -> str:
    for pattern, advice in _ADVICE:
        if re.search(pattern, stderr, re.IGNORECASE):
            return advice
    return "see the PostgreSQL server log for details"


async def run_pg_program(
    binary: str,
    args: Sequence[str],
    *,
    connection: PgConnection,
    failure: type[BackupError],
    doing: str,
    timeout: float,
    stdin: int | None = None,
    stdout: int | None = None,
) -> str:
    """Run one client program; returns what it printed unless `stdout` (a file descriptor)
    took its output. A non-zero exit, a timeout or a missing program raises `failure` (or
    PgToolNotInstalled) with a message that says what `doing` was and what to do next."""
    program = Path(binary).name
    try:
        with connection.program_env() as (env, fds):
            process = await start_program(
                binary, args, env=env, stdin=stdin, stdout=stdout, pass_fds=fds
            )
    except CANNOT_START as exc:
        raise PgToolNotInstalled(
            f"{program} could not be started from '{binary}' ({exc.strerror}): install the "
            "PostgreSQL client programs (apt install postgresql-client)"
        ) from None
    try:
        async with asyncio.timeout(timeout):
            output, errors = await process.communicate()
    except TimeoutError:
        await _stop(process)
        raise failure(
            f"{program} did not finish {doing} within {timeout:g} s and was stopped: check "
            f"that the server at {connection.location} answers and is not overloaded"
        ) from None
    except BaseException:
        await _stop(process)
        raise
    if (stopped := stopping_signal(process.returncode)) is not None:
        raise Interrupted(f"{program} was stopped by {stopped} before it finished {doing}")
    if process.returncode != 0:
        said = connection.scrub(stderr_tail(errors.decode(errors="replace")))
        raise failure(
            f"{program} failed {doing} at {connection.location} (exit {process.returncode}): "
            f"{said or 'no message'}; {advice_for(said)}"
        )
    return output.decode(errors="replace") if output is not None else ""


async def _stop(process: asyncio.subprocess.Process) -> None:
    """The client programs hold nothing a clean exit must release: the server rolls back
    whatever their connection left unfinished."""
    await stop_process(process, signal.SIGTERM, STOP_GRACE_SECONDS)
