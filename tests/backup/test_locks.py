"""Which repository locks count as stale: restic's 30-minute rule and dead local processes."""

from __future__ import annotations

import os
import socket
import subprocess
from datetime import UTC, datetime, timedelta

from backup.locks import lock_is_stale, parse_restic_time, process_is_running

NOW = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)


def lock(minutes_ago: float, pid: int, hostname: str | None = None) -> dict:
    created = NOW - timedelta(minutes=minutes_ago)
    return {
        "time": created.strftime("%Y-%m-%dT%H:%M:%S.123456789Z"),
        "exclusive": False,
        "hostname": hostname or socket.gethostname(),
        "username": "ers",
        "pid": pid,
    }


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_restic_nanosecond_times_are_read() -> None:
    parsed = parse_restic_time("2026-11-28T13:21:03.203834141Z")
    assert parsed == datetime(2026, 11, 28, 13, 21, 3, 203834, tzinfo=UTC)


def test_a_live_local_process_holds_a_fresh_lock() -> None:
    assert not lock_is_stale(lock(1, os.getpid()), now=NOW)


def test_a_dead_local_process_leaves_a_stale_lock() -> None:
    assert lock_is_stale(lock(1, dead_pid()), now=NOW)


def test_any_lock_older_than_30_minutes_is_stale() -> None:
    assert lock_is_stale(lock(31, os.getpid(), hostname="elsewhere"), now=NOW)


def test_a_fresh_lock_from_another_host_is_respected() -> None:
    assert not lock_is_stale(lock(1, dead_pid(), hostname="elsewhere"), now=NOW)


def test_process_is_running() -> None:
    assert process_is_running(os.getpid())
    assert not process_is_running(dead_pid())
    assert not process_is_running(0)
