"""The programs ERS starts (restic, the off-host copy's restic, pg_dump) get the service's
environment without its own ERS_* settings: a token or the database URL would be readable in
/proc/<pid>/environ of whatever `restic_binary` names. Each program here is the real one behind
a wrapper that writes down the environment it was given."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
from psycopg.conninfo import make_conninfo

from backup.errors import PgDumpFailed
from backup.offsite import OffsiteCopier, OffsiteRepository
from backup.pg_tools import PgConnection, PgTools, run_pg_program
from backup.restic import Restic

pytestmark = pytest.mark.integration

SERVICE_SECRETS = {
    "ERS_ADMIN_TOKEN": "adm-3b9e7c1f",
    "ERS_ALERT_TOKEN": "alr-8d2a6e4c",
    "ERS_INTAKE_TOKEN": "int-5f1c9b7a",
    "ERS_DATABASE_URL": "postgresql://ers:db-secret-77@127.0.0.1:5432/ers",
    "ERS_SOME_FUTURE_SETTING": "anything",
}
# What a program may need from the service's environment, and must still get.
PASSED_ON = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "PGSSLMODE": "prefer"}


@pytest.fixture
def service_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**SERVICE_SECRETS, **PASSED_ON}.items():
        monkeypatch.setenv(name, value)


def recording_wrapper(folder: Path, program: str) -> tuple[Path, Path]:
    """A script that writes its environment to a file of `dumps`, then runs `program`."""
    real = shutil.which(program) if "/" not in program else program
    if real is None:
        pytest.skip(f"{program} is not installed; `make system-test` installs it")
    dumps = folder / f"{Path(program).name}-environments"
    dumps.mkdir()
    wrapper = folder / f"recording-{Path(program).name}"
    wrapper.write_text(f'#!/bin/sh\nenv -0 > "{dumps}/$$"\nexec "{real}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper, dumps


def environments(dumps: Path) -> list[dict[str, str]]:
    found = []
    for dump in dumps.iterdir():
        pairs = [item.partition("=") for item in dump.read_text().split("\0") if item]
        found.append({name: value for name, _, value in pairs})
    assert found, "the wrapper was never run"
    return found


def assert_without_service_settings(env: dict[str, str]) -> None:
    assert [name for name in env if name.startswith("ERS_")] == []
    for secret in SERVICE_SECRETS.values():
        assert all(secret not in value for value in env.values())
    assert env["PATH"]
    for name, value in PASSED_ON.items():
        assert env[name] == value


async def test_restic_and_the_offsite_copy_get_no_ers_variables(
    tmp_path: Path, service_environment: None
) -> None:
    wrapper, dumps = recording_wrapper(tmp_path, "restic")
    password = tmp_path / "restic-password"
    password.write_text("source-password-4e1d")
    cache = tmp_path / "cache"
    data = tmp_path / "data"
    data.mkdir()
    (data / "budgets.db").write_text("groceries 120\n")
    restic = Restic(str(tmp_path / "repo"), password, binary=str(wrapper), cache_dir=cache)
    await restic.init()
    summary = await restic.backup(["budgets.db"], cwd=data, tags=["ers"])
    assert summary["snapshot_id"]
    offsite = OffsiteRepository(str(tmp_path / "offsite-repo"), password)
    copied = await OffsiteCopier(restic, offsite, cache_dir=cache).copy()
    assert copied.copied == 1

    for env in environments(dumps):
        assert_without_service_settings(env)
        assert env["RESTIC_PASSWORD_FILE"] == str(password)


async def dump_schema(pg_dump: Path, connection: PgConnection) -> None:
    """pg_dump of the test database's schema, run by ERS as a backup runs it."""
    await run_pg_program(
        str(pg_dump),
        ["--schema-only", "--dbname", connection.conninfo],
        connection=connection,
        failure=PgDumpFailed,
        doing="dumping the test database",
        timeout=60,
    )


async def test_pg_dump_gets_no_ers_variables_but_its_password(
    tmp_path: Path, pg_url: str, service_environment: None
) -> None:
    wrapper, dumps = recording_wrapper(tmp_path, PgTools.find().pg_dump)
    connection = PgConnection.from_url(pg_url)
    assert connection.password, "the test server's URL carries a password"

    await dump_schema(wrapper, connection)

    [env] = environments(dumps)
    assert_without_service_settings(env)
    assert env["PGPASSWORD"] == connection.password


async def test_a_client_keys_passphrase_reaches_pg_dump_off_its_command_line(
    tmp_path: Path, pg_url: str
) -> None:
    """Before: sslpassword stayed in the conninfo of --dbname, where `ps` shows it to every
    user of the host; libpq reads no variable for it, so it goes in a service file."""
    real = PgTools.find().pg_dump
    seen = tmp_path / "seen"
    wrapper = tmp_path / "recording-pg_dump"
    wrapper.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > "{seen}-argv"\ncat "$PGSERVICEFILE" > "{seen}-service"\n'
        f'exec "{real}" "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    connection = PgConnection.from_url(make_conninfo(pg_url, sslpassword="key-phrase-61a0"))

    await dump_schema(wrapper, connection)

    assert "key-phrase-61a0" not in (tmp_path / "seen-argv").read_text()
    assert "sslpassword=key-phrase-61a0" in (tmp_path / "seen-service").read_text()
    assert "key-phrase-61a0" not in repr(connection)
