"""Where the ``ers`` command finds the admin token: a blank variable counts as unset, as it
does for ``ers serve``, so it does not hide the token file named beside it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

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
