"""The status is cheap to read: it makes no round trip to the repository. Its look at the
repository's problem (restic opening it, every 10 s) runs in the background, and a status
read goes on the last finding. A repository that hangs (a rest-server that stopped
answering) held up the status read that happened to ask, until restic gave up 60 s later:
`ers status` and the balancer (30 s) gave up first."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx

from service.backups.repository_look import PROBLEM_READ_EVERY_S
from tests.conftest import start_ers


def held_restic(folder: Path, hold: Path, held: Path) -> Path:
    """restic, but `cat config` (how the repository is opened to look at it) waits while
    ``hold`` exists, after touching ``held``."""
    restic = shutil.which("restic")
    assert restic is not None, "restic is not installed"
    wrapper = folder / "held-restic"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" cat config "*) if [ -e {hold} ]; then touch {held}; '
        f"while [ -e {hold} ]; do sleep 0.05; done; fi ;; esac\n"
        f'exec {restic} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def test_the_status_answers_while_the_repository_does_not(tmp_path: Path) -> None:
    work = tmp_path / "ers"
    work.mkdir()
    (work / "restic-password").write_text("walk-password\n")
    hold, held = tmp_path / "hold", tmp_path / "held"
    env = {
        "ERS_BACKUPS_ENABLED": "true",
        "ERS_BACKUP_SCHEDULE_ENABLED": "false",
        "ERS_RESTIC_BINARY": str(held_restic(tmp_path, hold, held)),
    }
    ers = start_ers(work, env=env)
    try:
        # Longer than the balancer's 30 s, shorter than restic's own 60 s limit.
        http = httpx.Client(base_url=ers.url, timeout=45)
        deadline = time.monotonic() + 60  # the repository is created in the background
        while "error" in (first := http.get("/api/emergency/status").json()["backups"]):
            assert time.monotonic() < deadline, first
            time.sleep(0.2)
        hold.touch()
        # Status reads across twice the look's interval, so that one of them is due to ask.
        until = time.monotonic() + 2 * PROBLEM_READ_EVERY_S
        while time.monotonic() < until or not held.exists():
            reply = http.get("/api/emergency/status")
            assert reply.status_code == 200, reply.text
            assert reply.json()["backups"]["available"] == first["available"], reply.text
            time.sleep(0.2)
        assert hold.exists() and held.exists()  # restic still held: nobody waited for it
        http.close()
    finally:
        hold.unlink(missing_ok=True)
        ers.stop()
