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


def test_a_time_with_an_offset_keeps_it() -> None:
    """restic writes the local time of the host that made the snapshot (or lock) with its
    offset. The offset's digits were read as more of the fraction and the offset dropped, so
    a snapshot taken at 02:54:41Z on a host set to +09:00 was listed at 11:54:41Z, after the
    snapshots taken since, and the newest snapshot and a rollback's "before" went wrong."""
    for text in ("2026-12-06T11:54:41.749284588+09:00", "2026-12-06T11:54:41+09:00"):
        parsed = parse_restic_time(text)
        assert parsed is not None, text
        assert parsed.astimezone(UTC).replace(microsecond=0) == datetime(
            2026, 12, 6, 2, 54, 41, tzinfo=UTC
        ), text
    west = parse_restic_time("2026-12-05T16:54:41.7-10:00")
    assert west == datetime(2026, 12, 6, 2, 54, 41, 700000, tzinfo=UTC)


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
