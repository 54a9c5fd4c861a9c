"""In production the state is personal data (profiles, conversations): a real `ers serve`
keeps its data directory and the files it writes to its own user."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx

from tests.conftest import start_production_ers


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_production_keeps_the_state_to_its_own_user(tmp_path: Path) -> None:
    work = tmp_path / "ers"
    data = work / "data"
    data.mkdir(parents=True, mode=0o755)
    data.chmod(0o755)  # as an operator's mkdir under umask 022 makes it
    ers = start_production_ers(work)
    try:
        said = httpx.post(
            f"{ers.url}/chat",
            json={"message": "I am 30, 80 kg, 180 cm, male", "userId": "u1"},
            timeout=15,
        )
        assert said.status_code == 200, said.text
    finally:
        ers.stop()
    assert mode(data) == 0o700
    written = sorted(data.glob("*.sqlite3*"))
    assert {p.name for p in written} >= {"profiles.sqlite3", "conversations.sqlite3"}
    assert [(p.name, oct(mode(p))) for p in written if mode(p) & 0o077] == []
    assert "had mode 755, which lets other users read personal data; it is 700 now" in ers.log()
