"""The off-host copy is off until a second repository is named, and that repository cannot
be named without its own password file."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.backups.offsite import build_copier, offsite_keep_last
from service.settings import SettingsError, load_settings

pytestmark = pytest.mark.usefixtures("without_ers_settings")


def test_no_offsite_repository_means_no_copy() -> None:
    settings = load_settings()
    assert settings.offsite_repository is None
    assert settings.offsite_copy_interval_minutes == 360
    assert build_copier(settings) is None


def test_an_offsite_repository_without_its_password_file_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ERS_OFFSITE_REPOSITORY", "sftp:backup@vault.example:/srv/ers")
    with pytest.raises(
        SettingsError, match="^invalid setting 'offsite_password_file': .*ERS_OFFSITE_PASSWORD_FILE"
    ):
        load_settings()


def test_the_copier_reads_the_local_repository_into_the_offsite_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ERS_RESTIC_REPOSITORY", str(tmp_path / "local"))
    monkeypatch.setenv("ERS_RESTIC_PASSWORD_FILE", str(tmp_path / "local.pw"))
    monkeypatch.setenv("ERS_OFFSITE_REPOSITORY", "rest:https://ers:secret@vault.example/ers")
    (tmp_path / "offsite.pw").write_text("offsite-password\n")
    monkeypatch.setenv("ERS_OFFSITE_PASSWORD_FILE", str(tmp_path / "offsite.pw"))
    copier = build_copier(load_settings())
    assert copier is not None
    assert copier.source.repository == str(tmp_path / "local")
    assert copier.destination.repository == "rest:https://ers:secret@vault.example/ers"
    assert copier.destination.password_file == (tmp_path / "offsite.pw").resolve()


def test_the_offsite_repository_keeps_max_backups_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ERS_OFFSITE_REPOSITORY", "sftp:backup@vault.example:/srv/ers")
    (tmp_path / "offsite.pw").write_text("offsite-password\n")
    monkeypatch.setenv("ERS_OFFSITE_PASSWORD_FILE", str(tmp_path / "offsite.pw"))
    monkeypatch.setenv("ERS_MAX_BACKUPS", "7")
    assert load_settings().offsite_max_backups is None
    assert offsite_keep_last(load_settings()) == 7
    monkeypatch.setenv("ERS_OFFSITE_MAX_BACKUPS", "30")
    assert offsite_keep_last(load_settings()) == 30
    monkeypatch.setenv("ERS_OFFSITE_MAX_BACKUPS", "0")
    with pytest.raises(SettingsError, match="^invalid setting 'offsite_max_backups'"):
        load_settings()


@pytest.mark.parametrize(
    "variable,value",
    [
        ("ERS_OFFSITE_PASSWORD_FILE", "/run/secrets/offsite_password"),
        ("ERS_OFFSITE_COPY_INTERVAL_MINUTES", "60"),
        ("ERS_OFFSITE_MAX_BACKUPS", "30"),
    ],
)
def test_an_offsite_setting_without_the_offsite_repository_is_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    # No copy is made without the repository: the setting alone would do nothing.
    monkeypatch.setenv(variable, value)
    key = variable.removeprefix("ERS_").lower()
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert str(error.value) == (
        f"invalid setting '{key}': {key} is set without offsite_repository, so no off-host "
        "copy is made and it does nothing; set offsite_repository (ERS_OFFSITE_REPOSITORY) "
        f"too, or remove {key}"
    )


def test_an_offsite_password_file_that_cannot_be_read_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # ERS never makes it: without it every copy failed, from the first, after start-up.
    monkeypatch.setenv("ERS_OFFSITE_REPOSITORY", "sftp:backup@vault.example:/srv/ers")
    monkeypatch.setenv("ERS_OFFSITE_PASSWORD_FILE", str(tmp_path / "offsite.pw"))
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert str(error.value) == (
        f"invalid setting 'offsite_password_file': cannot read {tmp_path / 'offsite.pw'} (No "
        "such file or directory); point ERS_OFFSITE_PASSWORD_FILE at the file holding the "
        "off-host repository's password"
    )
