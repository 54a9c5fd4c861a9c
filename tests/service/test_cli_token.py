"""Where the ``ers`` command finds the admin token: a blank variable counts as unset, as it
does for ``ers serve``, so it does not hide the token file named beside it."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli.output import USAGE, CliError
from service.cli.remote import admin_token


@pytest.mark.parametrize("blank", ["", "   ", "\n"])
def test_a_blank_admin_token_variable_leaves_the_token_file_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blank: str
) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text("the-token\n")
    monkeypatch.setenv("ERS_ADMIN_TOKEN", blank)
    monkeypatch.setenv("ERS_ADMIN_TOKEN_FILE", str(token_file))
    assert admin_token(argparse.Namespace(token_file=None)) == "the-token"


def test_a_blank_admin_token_variable_alone_is_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERS_ADMIN_TOKEN", "  ")
    monkeypatch.delenv("ERS_ADMIN_TOKEN_FILE", raising=False)
    assert admin_token(argparse.Namespace(token_file=None)) is None


def test_a_token_file_that_is_not_text_is_refused_in_one_line(tmp_path: Path) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_bytes(b"\xff\xfe")
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "--token-file", str(token_file)]
        + ["--url", "http://127.0.0.1:9", "breakers", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"ers: cannot read the admin token file {token_file}")
    assert len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.parametrize("origin", ["ERS_ADMIN_TOKEN", "--token-file"])
def test_a_token_no_header_could_carry_is_refused_in_one_line(tmp_path: Path, origin: str) -> None:
    # The HTTP client could not encode it: a traceback instead of the request.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERS_")}
    options = []
    if origin == "--token-file":
        (tmp_path / "admin-token").write_text("s3cr\u00e9t\n")
        options = ["--token-file", str(tmp_path / "admin-token")]
    else:
        env[origin] = "s3cr\u00e9t"
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", *options, "--url", "http://127.0.0.1:9", "status"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "the token holds the character U+00E9, which is not printable ASCII" in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_an_output_that_cannot_be_written_is_one_line_not_a_trace(tmp_path: Path) -> None:
    """``> /dev/full``: every write fails with ENOSPC."""
    span = tmp_path / "span.json"
    span.write_text(json.dumps({"name": "agent.budget", "status": {"status_code": "ERROR"}}))
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", "classify", "--explain", str(span)]
            + ["-o", "json"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1, result.stderr
    assert result.stderr == "ers: No space left on device\n", result.stderr


def test_a_url_with_credentials_is_refused_rather_than_sent_instead_of_the_token(
    tmp_path: Path,
) -> None:
    # httpx turns a URL's user:password into a Basic Authorization header that replaces
    # the Bearer token: the service refused the token the operator gave with a 401.
    token_file = tmp_path / "admin-token"
    token_file.write_text("the-token\n")
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "--token-file", str(token_file)]
        + ["--url", "http://bob:s3cret@127.0.0.1:9", "breakers", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "holds a user name and password" in result.stderr
    assert "s3cret" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.parametrize("value", ["127.0.0.1:8100", ""])
def test_a_url_from_the_environment_that_is_no_url_is_named_as_the_variable(value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "breakers", "list"],
        env={**os.environ, "ERS_URL": value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"ers: $ERS_URL {value!r} is not a URL"), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_a_token_variable_and_a_token_file_variable_both_set_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `ers serve` refuses the two together; the command sent the variable's token without a
    # word, so a token rotated in the file was never the one sent.
    token_file = tmp_path / "admin-token"
    token_file.write_text("rotated\n")
    monkeypatch.setenv("ERS_ADMIN_TOKEN", "old-secret")
    monkeypatch.setenv("ERS_ADMIN_TOKEN_FILE", str(token_file))
    with pytest.raises(CliError) as refused:
        admin_token(argparse.Namespace(token_file=None))
    assert refused.value.code == USAGE
    assert str(refused.value).startswith(
        "$ERS_ADMIN_TOKEN and $ERS_ADMIN_TOKEN_FILE are both set"
    ), refused.value
    assert "old-secret" not in str(refused.value) and "rotated" not in str(refused.value)
    # --token-file names the one meant.
    assert admin_token(argparse.Namespace(token_file=token_file)) == "rotated"


def test_a_blank_token_file_variable_beside_the_token_leaves_the_token_in_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Was refused as "both set", though only one of the two held anything.
    monkeypatch.setenv("ERS_ADMIN_TOKEN", "the-token")
    monkeypatch.setenv("ERS_ADMIN_TOKEN_FILE", "  ")
    assert admin_token(argparse.Namespace(token_file=None)) == "the-token"
