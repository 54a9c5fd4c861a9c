"""The live state's lock on a real PostgreSQL server: replicas share it, an offline command
takes it alone, and a replica whose connection breaks takes it again."""

from __future__ import annotations

import os

import psycopg
import pytest

from service.fleet.datadir_lock import OFFLINE_ADVICE, DataDirInUse
from service.fleet.presence import LIVE_STATE_LOCK_KEY, ReplicaPresence, offline_exclusive
from tests.service.test_fleet import eventually

HOLDERS = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND ((classid::bigint << 32) | objid::bigint) = %s"
)


def holder_pids(url: str) -> set[int]:
    """The server sessions holding the live state's lock."""
    with psycopg.connect(url) as conn:
        return {int(row[0]) for row in conn.execute(HOLDERS, (LIVE_STATE_LOCK_KEY,))}


def holders(url: str) -> int:
    return len(holder_pids(url))


async def test_replicas_share_the_state_and_an_offline_command_waits_for_none(
    pg_url: str,
) -> None:
    a, b = ReplicaPresence(pg_url), ReplicaPresence(pg_url)
    await a.start()
    await b.start()
    try:
        assert holders(pg_url) == 2
        with pytest.raises(DataDirInUse) as refused:
            async with offline_exclusive(pg_url):
                pytest.fail("an offline change ran beside live replicas")
        assert f"ers serve pid {os.getpid()}" in str(refused.value)
        assert OFFLINE_ADVICE in str(refused.value)
        assert pg_url not in str(refused.value)
    finally:
        await a.stop()
        await b.stop()
    async with offline_exclusive(pg_url):
        c = ReplicaPresence(pg_url)
        with pytest.raises(DataDirInUse, match="ers backup --offline"):
            await c.start()
    assert holders(pg_url) == 0


async def test_a_second_offline_command_is_told_another_holds_the_state_not_to_stop_the_service(
    pg_url: str,
) -> None:
    """Before: "stop the service first", with no service running."""
    async with offline_exclusive(pg_url):
        with pytest.raises(DataDirInUse) as refused:
            async with offline_exclusive(pg_url):
                pytest.fail("two offline changes ran at once")
    said = str(refused.value)
    assert f"in use by ers backup --offline pid {os.getpid()}" in said
    assert said.endswith(": let it finish, then try again")
    assert "stop the service" not in said


async def test_a_replica_whose_connection_breaks_holds_the_state_again(pg_url: str) -> None:
    presence = ReplicaPresence(pg_url, check_interval_s=0.1)
    await presence.start()
    try:
        [first] = holder_pids(pg_url)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (first,))
        await eventually(lambda: len(holder_pids(pg_url) - {first}) == 1, 5, "the lock taken again")
        with pytest.raises(DataDirInUse):
            async with offline_exclusive(pg_url):
                pytest.fail("an offline change ran beside a live replica")
    finally:
        await presence.stop()
    assert holders(pg_url) == 0
