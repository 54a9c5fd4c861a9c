"""What a program ERS starts wrote, as a message tells it: the values of the environment's
credential variables left out, and the public values named like them kept."""

from __future__ import annotations

import pytest

from backup.process import without_credentials

# The fingerprint the official python:3.11 images set as GPG_KEY.
FINGERPRINT = "A035C8C19219BA821ECEA86B64E628F8D684696D"
SECRET = "k3y-0f-th3-b4ckend-s7ore"


@pytest.mark.parametrize(
    "name", ["GPG_KEY", "GPG_KEYS", "SSH_PUBLIC_KEY", "SIGNING_KEY_FINGERPRINT"]
)
def test_a_public_value_named_like_a_key_is_kept(name: str) -> None:
    """Python's official Docker images set GPG_KEY, a public fingerprint; restic's messages
    had it as *** wherever it showed, as if it were a secret."""
    text = f"Fatal: gpg: key {FINGERPRINT} not found"
    assert without_credentials(text, {name: FINGERPRINT}) == text


@pytest.mark.parametrize(
    "name",
    [
        "GPG_PASSPHRASE",
        "GPG_PRIVATE_KEY",
        "GPG_KEY_PASSWORD",
        "PRIVATE_KEY",
        "PUBLIC_KEY_TOKEN",
        "SECRET_FINGERPRINT",
        "MY_GPG_KEY",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "B2_ACCOUNT_KEY",
        "AZURE_ACCOUNT_SAS",
        "GOOGLE_ACCESS_TOKEN",
        "OS_PASSWORD",
        "RESTIC_PASSWORD",
        "api_key",
        "GITHUB_TOKEN",
        "CLIENT_SECRET",
        "GOOGLE_APPLICATION_CREDENTIALS_JSON",
    ],
)
def test_a_credential_near_a_public_name_is_left_out(name: str) -> None:
    text = f"Fatal: the server answered 403 for {SECRET}"
    assert without_credentials(text, {name: SECRET, "GPG_KEY": FINGERPRINT}) == (
        "Fatal: the server answered 403 for ***"
    )


# What CI setups put in a GPG_KEY besides a fingerprint: the private key, armoured and then
# base64-encoded onto one line, or its passphrase.
PRIVATE_KEY_BASE64 = "LS0tLS1CRUdJTiBQR1AgUFJJVkFURSBLRVkgQkxPQ0stLS0tLQpsUWRHQkdaeg=="
PRIVATE_KEY_BLOCK = "-----BEGIN PGP PRIVATE KEY BLOCK-----\nlQdGBGZz\n"
PASSPHRASE = "correct horse battery staple"


@pytest.mark.parametrize("value", [PRIVATE_KEY_BASE64, PRIVATE_KEY_BLOCK, PASSPHRASE])
@pytest.mark.parametrize("name", ["GPG_KEY", "GPG_KEYS", "SSH_PUBLIC_KEY"])
def test_a_secret_under_a_public_name_is_left_out(name: str, value: str) -> None:
    """GPG_KEY's value was kept whatever it held: a private key put there went into
    restic's messages, the log and the incidents as it was."""
    text = f"Fatal: unable to open the repository: {value}"
    assert without_credentials(text, {name: value}) == ("Fatal: unable to open the repository: ***")


@pytest.mark.parametrize(
    "value",
    [
        "A035 C8C1 9219 BA82 1ECE  A86B 64E6 28F8 D684 696D",  # as gpg prints it
        "0x64E628F8D684696D",
        f"{FINGERPRINT} 1198C0117593497A5EC5C199286AF1F9897469DC",  # PHP's GPG_KEYS
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2dBcQd8vEi7Ck4Vq0hT9wKx backup@host",
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\nmQINBGZz\n-----END PGP PUBLIC KEY BLOCK-----",
    ],
)
def test_a_fingerprint_or_public_key_under_a_public_name_is_kept(value: str) -> None:
    text = f"Fatal: gpg: {value}"
    assert without_credentials(text, {"GPG_KEY": value}) == text
