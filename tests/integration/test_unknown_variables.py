"""`ers serve` says which ERS_ variables name no setting, at start, in its log."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import start_ers


def test_a_misspelt_variable_is_named_in_the_log_at_start(tmp_path: Path) -> None:
    ers = start_ers(tmp_path, env={"ERS_MAX_MESSAGE_CHAR": "10"})
    try:
        assert (
            "ERS_MAX_MESSAGE_CHAR names no setting and is ignored (did you mean "
            "ERS_MAX_MESSAGE_CHARS?)"
        ) in ers.log()
    finally:
        ers.stop()
