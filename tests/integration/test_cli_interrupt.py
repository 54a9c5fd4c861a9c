"""A Ctrl-C while ``ers`` waits for long work (a rollback, a backup) stops the wait, not the
work, which the service finishes: the command says so, where it said nothing (exit 130), and
a rollback that went on looked cancelled."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("arguments", "waiting", "see"),
    [
        (["rollback", "3f2a1b4c", "--reason", "r", "--yes"], "rolling back", "`ers audit` and "),
        # A backup is in the list, never in the audit trail, which it pointed to.
        (["create"], "backing up", ""),
    ],
    ids=["rollback", "create"],
)
def test_a_ctrl_c_during_a_rollback_says_the_service_goes_on(
    tmp_path: Path, arguments: list[str], waiting: str, see: str
) -> None:
    received = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def hold() -> None:  # takes the request, never answers
            connection, _ = server.accept()
            with connection:
                while connection.recv(65536):  # until the client goes
                    received.set()

        threading.Thread(target=hold, daemon=True).start()
        command = [sys.executable, "-m", "service.cli", "backup", *arguments]
        process = subprocess.Popen(
            [*command, "--url", f"http://127.0.0.1:{port}"],
            env={k: v for k, v in os.environ.items() if not k.startswith("ERS_")},
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A run started in the background by a script ignores SIGINT, and so would this.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            assert received.wait(60), "the rollback request never arrived"
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=60)
        finally:
            process.kill()
    assert process.returncode == 130, err
    assert err.splitlines() == [
        f"ers: interrupted: only this command stopped waiting ({waiting}); the service"
        f" finishes the work if it received the request; see how it ends with {see}"
        "`ers backup list`"
    ], err
    assert out == ""


def test_a_service_gone_in_the_middle_of_a_rollback_is_not_called_unreachable(
    tmp_path: Path,
) -> None:
    """Before: "cannot reach ERS ...; is it running? Point --url or $ERS_URL at it", for a
    service that took the rollback and stopped (a kill) before it answered."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def drop() -> None:  # takes the request, then closes without an answer
            connection, _ = server.accept()
            with connection:
                connection.recv(65536)

        threading.Thread(target=drop, daemon=True).start()
        command = [sys.executable, "-m", "service.cli", "backup", "rollback", "3f2a1b4c"]
        done = subprocess.run(
            [*command, "--reason", "r", "--yes", "--url", f"http://127.0.0.1:{port}"],
            env={k: v for k, v in os.environ.items() if not k.startswith("ERS_")},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 3, done.stderr
    assert "closed the connection before it answered POST /api/emergency/rollback" in done.stderr
    assert "it may have stopped (a crash, a kill) in the middle of the request" in done.stderr
    assert "see how it ended with `ers audit` and `ers backup list`" in done.stderr
    assert "is it running?" not in done.stderr
