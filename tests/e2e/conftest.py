"""The alert loop of ``test_alert_loop.Loop`` as a fixture: a module (or a test, through
``parametrize``) states what the loop's ERS runs with by ``loop_env``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_alert_loop import Loop


@pytest.fixture
def loop_env() -> dict[str, str]:
    return {}


@pytest.fixture
def loop(
    tmp_path: Path, loop_env: dict[str, str], request: pytest.FixtureRequest
) -> Iterator[Loop]:
    started = Loop(tmp_path, loop_env)
    failed_before = request.session.testsfailed
    try:
        yield started
        if request.session.testsfailed > failed_before:
            started.dump()
    finally:
        started.stop()
