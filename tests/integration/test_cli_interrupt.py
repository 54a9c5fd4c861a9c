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
