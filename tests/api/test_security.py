"""Production rules, body limits and reads that need the admin token in production."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from service.config_checks import unknown_variables
from service.settings import Settings, SettingsError
from service.web.app import create_app


def production(tmp_path: Path, **changes: object) -> Settings:
    password = tmp_path / "restic-password"
    password.write_text("pw")
    password.chmod(0o600)
    values: dict[str, object] = {
        "env": "production",
        "data_dir": tmp_path / "data",
        "restic_password_file": password,
        "admin_token": SecretStr("adm1n"),
        "alert_token": SecretStr("al3rt"),
        "intake_token": SecretStr("int4ke"),
    }
    values.update(changes)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes,expected",
    [
        ({"admin_token": None}, "production needs ERS_ADMIN_TOKEN"),
        ({"intake_token": None}, "production needs ERS_INTAKE_TOKEN"),
        (
            {"admin_token": None, "alert_token": None, "intake_token": None},
            "production needs ERS_ADMIN_TOKEN or ERS_ADMIN_TOKEN_FILE; and ERS_ALERT_TOKEN "
            "or ERS_ALERT_TOKEN_FILE; and ERS_INTAKE_TOKEN or ERS_INTAKE_TOKEN_FILE; set them",
        ),
        ({"admin_token": ""}, "production needs ERS_ADMIN_TOKEN or ERS_ADMIN_TOKEN_FILE; set"),
        ({"alert_token": " \t"}, "production needs ERS_ALERT_TOKEN or ERS_ALERT_TOKEN_FILE; set"),
        ({"fault_injection_enabled": True}, "fault injection is never allowed in production"),
        # Without spans no failure became an incident: production without its response.
        ({"telemetry_enabled": False}, "no failing call becomes an incident"),
    ],
)
def test_production_refuses_to_start(
    tmp_path: Path, changes: dict[str, object], expected: str
) -> None:
    with pytest.raises(SettingsError, match=expected):
        create_app(production(tmp_path, **changes))


def test_production_refuses_to_start_beside_a_variable_that_names_no_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: a log line, and the replica ran on SQLite files of its own beside the fleet.
    monkeypatch.setenv("ERS_DATABSE_URL", "postgresql://ers@db/ers")
    with pytest.raises(SettingsError) as refused:
        create_app(production(tmp_path))
    # Worded as the log line of a service that is not in production: one line to look for.
    [logged] = unknown_variables(os.environ, Settings.model_fields)
    assert str(refused.value) == (
        f"{logged}: production does not start beside such a variable; correct or unset it"
    )
    assert logged == (
        "ERS_DATABSE_URL names no setting and is ignored (did you mean ERS_DATABASE_URL?)"
    )
    monkeypatch.delenv("ERS_DATABSE_URL")
    monkeypatch.setenv("ERS_URL", "http://127.0.0.1:8000")  # the command line's: no setting
    create_app(production(tmp_path))


@pytest.mark.parametrize(
    "variable", ["ERS_LONG_TESTS", "ERS_FUZZ_EXAMPLES", "ERS_TEST_KILL_AFTER_RENAMES"]
)
def test_production_starts_beside_the_tests_own_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    # A test run's environment reaches the production service its tests start: with
    # ERS_LONG_TESTS=1 (the long run) every production test was refused instead.
    monkeypatch.setenv(variable, "1")
    create_app(production(tmp_path))


def test_production_names_a_token_file_that_holds_only_blanks(tmp_path: Path) -> None:
    blank = tmp_path / "intake.token"
    blank.write_text(" \n")
    blank.chmod(0o600)
    with pytest.raises(
        SettingsError,
        match=f"production needs ERS_INTAKE_TOKEN or ERS_INTAKE_TOKEN_FILE \\({blank} is blank\\)",
    ):
        create_app(production(tmp_path, intake_token=None, intake_token_file=blank))


def test_production_refuses_a_readable_password_file(tmp_path: Path) -> None:
    settings = production(tmp_path)
    settings.restic_password_file.chmod(0o644)
    with pytest.raises(SettingsError, match="chmod 600"):
        create_app(settings)


@pytest.mark.parametrize("setting", ["admin_token_file", "intake_token_file"])
def test_production_refuses_a_readable_token_file(tmp_path: Path, setting: str) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken")
    token.chmod(0o644)
    name = setting.removesuffix("_token_file")
    settings = production(tmp_path, **{f"{name}_token": None, setting: token})
    with pytest.raises(SettingsError, match=f"has mode 644; run: chmod 600 {token}$"):
        create_app(settings)
    token.chmod(0o600)
    assert create_app(production(tmp_path, **{f"{name}_token": None, setting: token}))


def test_production_refuses_a_readable_offsite_password_file(tmp_path: Path) -> None:
    offsite = tmp_path / "offsite-password"
    offsite.write_text("pw")
    offsite.chmod(0o640)
    settings = production(
        tmp_path, offsite_repository=str(tmp_path / "offsite"), offsite_password_file=offsite
    )
    with pytest.raises(SettingsError, match="off-host password file .* has mode 640; run: chmod"):
        create_app(settings)


async def test_production_reads_need_the_admin_token_and_hide_fault_injection(
    tmp_path: Path,
) -> None:
    app = create_app(production(tmp_path))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            assert (await http.get("/api/emergency/status")).status_code == 401
            headers = {"Authorization": "Bearer adm1n"}
            assert (await http.get("/api/emergency/status", headers=headers)).status_code == 200
            simulate = await http.post(
                "/api/emergency/simulate-error", json={"component": "budget"}, headers=headers
            )
            assert simulate.status_code == 404
            # The open endpoints stay open.
            assert (await http.post("/chat", json={"message": "hi"})).status_code == 200
            assert (await http.get("/livez")).status_code == 200
            assert (await http.get("/metrics")).status_code == 200


async def test_oversized_bodies_get_413(client: httpx.AsyncClient) -> None:
    big = b'{"message": "' + b"x" * 2_000_000 + b'"}'
    declared = await client.post("/chat", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413
    assert "at most 1048576 bytes" in declared.json()["detail"]

    async def chunks():  # no content-length: the size is counted while reading
        for _ in range(40):
            yield b"x" * 65536

    streamed = await client.post(
        "/chat", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
