"""Stale repository locks: which ones restic would itself consider abandoned, and removing them.

A lock is stale when it is older than restic's own limit (30 minutes) or when it was left on
this host by a process that no longer runs (a crash, a kill -9). Live locks are never touched.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backup.restic import Restic

STALE_AFTER = timedelta(minutes=30)


def process_is_running(pid: int) -> bool:
    """True when `pid` is a live (not zombie) process on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            # The state letter follows the parenthesised command name.
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def parse_restic_time(value: str) -> datetime | None:
    """restic writes nanosecond RFC 3339 times; Python reads microseconds at most."""
    if not value:
        return None
    text = value.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:
        # The fraction's digits run up to the offset (`+09:00`), whose digits are not its own.
        zone = rest.lstrip("0123456789")
        digits = rest[: len(rest) - len(zone)]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def lock_is_stale(
    lock: dict[str, Any], *, now: datetime | None = None, hostname: str | None = None
) -> bool:
    created = parse_restic_time(str(lock.get("time", "")))
    now = now or datetime.now(UTC)
    if created is not None and now - created > STALE_AFTER:
        return True
    if lock.get("hostname") != (hostname or socket.gethostname()):
        return False  # another machine's process cannot be checked from here
    pid = lock.get("pid")
    return isinstance(pid, int) and not process_is_running(pid)


async def remove_stale_locks(restic: Restic) -> bool:
    """Remove stale locks with `restic unlock`; True when there was one to remove."""
    if not any(await _staleness(restic)):
        return False
    await restic.unlock()
    remaining = await _staleness(restic)
    # restic counts a zombie as alive and keeps its lock; when only stale locks are left,
    # removing all of them cannot hurt a running process.
    if remaining and all(remaining):
        await restic.unlock(remove_all=True)
    return True


async def _staleness(restic: Restic) -> list[bool]:
    """One entry per lock in the repository: whether it is stale."""
    verdicts = []
    for lock_id in await restic.list_lock_ids():
        lock = await restic.read_lock(lock_id)
        if lock is not None:
            verdicts.append(lock_is_stale(lock))
    return verdicts
