"""What the off-host copy shows of a repository address in its messages and logs."""

from __future__ import annotations

import pytest

from backup.offsite import shown


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("rest:https://ers:s3cret@vault.example/ers", "rest:https://***@vault.example/ers"),
        ("rest:http://token@vault.example:8000/", "rest:http://***@vault.example:8000/"),
        ("sftp:backup@vault.example:/srv/ers", "sftp:backup@vault.example:/srv/ers"),
        ("s3:s3.amazonaws.com/bucket/ers", "s3:s3.amazonaws.com/bucket/ers"),
        ("/mnt/usb/ers-restic", "/mnt/usb/ers-restic"),
    ],
)
def test_a_url_loses_its_user_and_password(address: str, expected: str) -> None:
    assert shown(address) == expected
