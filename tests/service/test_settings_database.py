"""ERS_DATABASE_URL: PostgreSQL only, a bad value stops start-up with one line naming the
key, and the password is never shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import SettingsError, load_settings
from service.stores.pg_connection import server_location
from tests.conftest import ROOT

# Settings come from the environment and ./ers.yaml: each test starts from neither.
pytestmark = pytest.mark.usefixtures("without_ers_settings")


def test_unset_means_sqlite_files() -> None:
    settings = load_settings()
    assert settings.database_url is None
    assert settings.backups_enabled is True


@pytest.mark.parametrize(
    "url", ["postgresql://ers:pw@db:5432/ers", "postgres://ers@db/ers?sslmode=require"]
)
def test_postgres_urls_are_accepted_and_kept_secret(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ERS_DATABASE_URL", url)
    settings = load_settings()
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == url
    assert "pw@" not in repr(settings) and "pw@" not in str(settings.model_dump())
    # Backups stay on: they dump the database's schemas instead of copying files.
    assert settings.backups_enabled is True


def test_an_at_sign_outside_the_user_part_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://u:Pa55%40word@db/ers?passfile=/run/secrets/a@b"
    monkeypatch.setenv("ERS_DATABASE_URL", url)
    assert load_settings().database_url is not None


def test_an_empty_value_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERS_DATABASE_URL", "")
    assert load_settings().database_url is None


@pytest.mark.parametrize(
    "url,expected",
    [
        ("mysql://ers:hunter22@db/ers", "got scheme 'mysql'"),
        ("sqlite:///var/ers.db", "got scheme 'sqlite'"),
        ("hunter22", "got no scheme"),
        ("postgresql://ers:hunter22@db:port/ers", "not a valid URL"),
        (
            "postgresql://u:hunter22@word@127.0.0.1:18598/db",
            "the password or user name holds an '@'; percent-encode it as %40",
        ),
        ("postgresql://u:hunter22@@127.0.0.1/db?sslmode=require", "percent-encode it as %40"),
    ],
)
def test_a_bad_url_names_the_key_without_the_password(
    url: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ERS_DATABASE_URL", url)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("invalid setting 'database_url': ")
    assert expected in message
    assert "hunter22" not in message and "\n" not in message


def test_a_bad_url_stops_start_up_with_one_line(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ERS_")},
        "ERS_DATABASE_URL": "mysql://ers:hunter22@db/ers",
        "ERS_DATA_DIR": str(tmp_path / "data"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "invalid setting 'database_url'" in result.stderr
    assert "hunter22" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "url,shown",
    [
        ("postgresql://ers:s3cret@db:5432/ers", "postgresql://ers@db:5432/ers"),
        ("postgresql://ers@db/ers", "postgresql://ers@db/ers"),
        ("postgresql://ers:a%40b@[::1]:5/ers", "postgresql://ers@[::1]:5/ers"),
        ("postgres://db/ers?user=ers&password=s3cret", "postgres://db/ers"),
        ("postgres://db/ers?sslpassword=s3cret#x", "postgres://db/ers"),
        # It was "postgresql:/ers", naming no server at all.
        (
            "postgresql:///ers?host=127.0.0.1&port=1&user=ers&password=s3cret",
            "postgresql:///ers (host=127.0.0.1 port=1)",
        ),
        ("host=db port=5432 dbname=ers password=s3cret", "host=db port=5432 dbname=ers"),
        ("host=db password='s3cret", "(a connection string that does not parse; not shown)"),
    ],
)
def test_a_server_is_named_without_its_password_or_query(url: str, shown: str) -> None:
    assert server_location(url) == shown
