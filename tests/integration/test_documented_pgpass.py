"""The fleet's database password as deploy/secrets/README.md has the operator write it: a
libpq password file named by ``passfile`` in ERS_DATABASE_URL, the URL itself without a
password. A real ERS on a real PostgreSQL server with that file must back up and then test
a rollback, which restores into a scratch database of its own on the same server.

Before, the documented line named the database `ers` alone: libpq found no password for the
scratch databases, so every test rollback answered 503 ("fe_sendauth: no password
supplied") and every restore drill failed, in the fleet exactly as compose runs it."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.conftest import start_ers

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECRETS_README = ROOT / "deploy/secrets/README.md"
# The URL compose gives both replicas (tests/compose checks that they share it).
COMPOSE_URL = urlsplit("postgresql://ers@postgres:5432/ers")


def documented_pgpass_line() -> str:
    """The printf format deploy/secrets/README.md writes ers_pgpass with."""
    found = re.findall(
        r"printf '([^']*)\\n' \"\$\(cat postgres_password\)\" > ers_pgpass",
        (SECRETS_README.read_text()),
    )
    assert len(found) == 1, "deploy/secrets/README.md: no single line that writes ers_pgpass"
    return str(found[0])


def pgpass_for(server_url: str) -> str:
    """The documented line with compose's host, port, database and role in each field that
    names them replaced by the test server's (a `*` stays `*`)."""
    server = urlsplit(server_url)
    fields = documented_pgpass_line().split(":")
    assert len(fields) == 5 and fields[4] == "%s", fields
    compose = [COMPOSE_URL.hostname, str(COMPOSE_URL.port), COMPOSE_URL.path[1:]]
    compose.append(COMPOSE_URL.username)
    ours = [server.hostname, str(server.port or 5432), server.path[1:], server.username]
    for i, (field, theirs, mine) in enumerate(zip(fields[:4], compose, ours, strict=True)):
        if field != "*":
            assert field == theirs, f"field {i} of the pgpass line is {field!r}, not {theirs!r}"
            fields[i] = str(mine)
    return ":".join(fields).replace("%s", server.password or "") + "\n"


def test_the_documented_password_file_lets_a_test_rollback_restore_into_scratch(
    tmp_path: Path, pg_url: str
) -> None:
    parts = urlsplit(pg_url)
    assert parts.password, "the test server's URL carries the password the file must hold"
    passfile = tmp_path / "ers_pgpass"
    passfile.write_text(pgpass_for(pg_url))
    passfile.chmod(0o600)
    netloc = f"{parts.username}@{parts.hostname}:{parts.port or 5432}"
    url = urlunsplit(parts._replace(netloc=netloc, query=f"passfile={passfile}"))

    env = {
        "ERS_DATABASE_URL": url,
        "ERS_BACKUPS_ENABLED": "true",
        "ERS_BACKUP_SCHEDULE_ENABLED": "false",
    }
    ers = start_ers(tmp_path / "ers", env=env)
    try:
        ers.wait_for_backups()
        with httpx.Client(base_url=ers.url, timeout=120) as client:
            made = client.post("/api/emergency/backups/create", json={"type": "budgets"})
            assert made.status_code == 200, made.text
            preview = client.post(
                "/api/emergency/backups/test-rollback", json={"backupId": made.json()["backupId"]}
            )
        assert preview.status_code == 200, preview.text
        budgets = preview.json()["components"]["budgets"]
        assert budgets["verification"]["integrity"] == "ok", budgets
    finally:
        ers.stop()
    assert parts.password not in ers.log()
