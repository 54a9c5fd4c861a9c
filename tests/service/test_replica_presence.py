"""The live state's lock on a real PostgreSQL server: replicas share it, an offline command
takes it alone, and a replica whose connection breaks takes it again."""

from __future__ import annotations

import asyncio
import os

import psycopg
import pytest

from service.fleet import presence as presence_module
from service.fleet.datadir_lock import OFFLINE_ADVICE, DataDirInUse
from service.fleet.presence import LIVE_STATE_LOCK_KEY, ReplicaPresence, offline_exclusive
from service.fleet.schema import COMPONENT as FLEET
from service.fleet.schema import MIGRATIONS as FLEET_MIGRATIONS
from tests.pg import PostgresServer, apply_migrations
from tests.service.test_fleet import eventually

HOLDERS = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND ((classid::bigint << 32) | objid::bigint) = %s AND database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database())"
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


async def test_a_replica_whose_lock_went_with_its_connection_still_stops_offline_changes(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server restart took the replica's lock with its connection; an offline backup and
    rollback then ran beside the replica, which went on serving and took its lock again."""
    monkeypatch.setattr(presence_module, "RETAKE_S", 30.0)  # no retake during the test
    apply_migrations(pg_url, {FLEET: FLEET_MIGRATIONS})
    presence = ReplicaPresence(pg_url, check_interval_s=30)
    await presence.start()
    try:
        await eventually(lambda: stamps(pg_url) == 1, 5, "the replica's stamp")
        [first] = holder_pids(pg_url)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (first,))
        await eventually(lambda: holders(pg_url) == 0, 5, "the lock gone with its session")
        with pytest.raises(DataDirInUse) as refused:
            async with offline_exclusive(pg_url):
                pytest.fail("an offline change ran beside a live replica")
        said = str(refused.value)
        assert f"was in use by ers serve pid {os.getpid()}" in said, said
        assert "a connection broke" in said and OFFLINE_ADVICE in said
    finally:
        await presence.stop()
    # Stopped: its stamp goes with it, and an offline change may run at once.
    assert stamps(pg_url) == 0
    async with offline_exclusive(pg_url):
        pass


def stamps(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ers_fleet.stamps WHERE key LIKE 'presence:%'"
        ).fetchone()
    return 0 if row is None else int(row[0])


async def test_a_replica_counts_from_the_servers_return_however_long_it_was_down(
    own_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Down longer than the window, the server took every replica's stamp out of it: an
    offline backup ran beside replicas that were about to take their locks again."""
    # The window, made short; long enough for the checks below after the server's return.
    monkeypatch.setattr(presence_module, "SEEN_WITHIN_S", 8.0)
    monkeypatch.setattr(presence_module, "RETAKE_S", 30.0)  # no retake during the test
    url = own_server.create_database()
    apply_migrations(url, {FLEET: FLEET_MIGRATIONS})
    presence = ReplicaPresence(url, check_interval_s=30)
    await presence.start()
    try:
        await eventually(lambda: stamps(url) == 1, 5, "the replica's stamp")
        own_server.halt()
        await asyncio.sleep(9)  # down longer than the window
        own_server.start()
        assert holders(url) == 0
        with pytest.raises(DataDirInUse, match="or the server restarted"):
            async with offline_exclusive(url):
                pytest.fail("an offline change ran beside a replica taking its lock again")
    finally:
        await presence.stop()


async def test_the_stamps_of_killed_replicas_are_cleared_not_kept_for_good(pg_url: str) -> None:
    """Before: a replica killed left its stamp for good, one row more at every kill."""
    apply_migrations(pg_url, {FLEET: FLEET_MIGRATIONS})

    def killed(name: str, ago_s: float) -> None:
        with psycopg.connect(pg_url) as conn:
            conn.execute(
                "INSERT INTO ers_fleet.stamps (key, value, updated_at) VALUES "
                "(%s, '{}', now() - make_interval(secs => %s))",
                (f"presence:{name}", ago_s),
            )

    killed("ers serve pid 1 on old", 2 * 86_400)
    killed("ers serve pid 2 on recent", 3600)
    replica = ReplicaPresence(pg_url)
    await replica.start()  # a day on, a stamp is cleared by a replica's start
    try:
        with psycopg.connect(pg_url) as conn:
            keys = {row[0] for row in conn.execute("SELECT key FROM ers_fleet.stamps")}
        assert "presence:ers serve pid 1 on old" not in keys
        assert "presence:ers serve pid 2 on recent" in keys
    finally:
        await replica.stop()
    assert stamps(pg_url) == 1  # its own removed at its stop; the recent one kept
