"""The fleet jobs lock on a real PostgreSQL server: two "replicas" in one process, each its
own FleetLeader and connection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import psycopg
import pytest

from service.fleet import FleetLeader
from service.fleet.leader import (
    FLEET_JOBS_LOCK_KEY,
    FleetLockUnavailable,
    repository_init_lock,
)
from service.stores.postgres import PostgresDatabase
from tests.service.test_fleet import eventually

StartLeader = Callable[[str], FleetLeader]


@pytest.fixture
async def start_leader(pg_url: str) -> AsyncIterator[StartLeader]:
    database = PostgresDatabase(pg_url)
    leaders: list[FleetLeader] = []

    def start(replica: str) -> FleetLeader:
        leader = FleetLeader(
            database, pg_url, replica=replica, retry_interval_s=0.1, check_interval_s=0.1
        )
        leader.start()
        leaders.append(leader)
        return leader

    yield start
    for leader in leaders:
        await leader.stop()


def lock_holders(url: str) -> int:
    """Sessions holding the fleet jobs lock in the test's database (advisory locks are per
    database: another test's fleet on the same server holds its own)."""
    key = FLEET_JOBS_LOCK_KEY
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND ((classid::bigint << 32) | objid::bigint) = %s AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())",
            (key,),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_exactly_one_replica_runs_the_jobs_and_another_takes_over_when_it_stops(
    start_leader: StartLeader, pg_url: str
) -> None:
    a, b = start_leader("a"), start_leader("b")
    await eventually(lambda: a.is_leader or b.is_leader, 5, "a leader")
    await asyncio.sleep(0.5)  # several retries of the other one
    assert [a.is_leader, b.is_leader].count(True) == 1
    assert lock_holders(pg_url) == 1

    leader, other = (a, b) if a.is_leader else (b, a)
    await leader.stop()
    await eventually(lambda: other.is_leader, 5, "the take-over")
    assert not leader.is_leader


async def test_a_lost_connection_steps_down_at_once_and_the_jobs_move_on(
    start_leader: StartLeader, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ers.fleet")
    a = start_leader("a")
    await eventually(lambda: a.is_leader, 5, "a leader")
    stepped_down = asyncio.create_task(a.wait_not_leader())
    b = start_leader("b")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l WHERE l.locktype = 'advisory' "
            "AND l.granted AND ((l.classid::bigint << 32) | l.objid::bigint) = %s AND "
            "l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (FLEET_JOBS_LOCK_KEY,),
        )
    await eventually(
        lambda: "this replica (a) stopped running the fleet jobs" in caplog.text, 5, "the step down"
    )
    await asyncio.wait_for(stepped_down, 5)  # what a ran under the lock may stop now
    await eventually(lambda: a.is_leader or b.is_leader, 5, "a new leader")
    await asyncio.sleep(0.3)
    assert [a.is_leader, b.is_leader].count(True) == 1
    assert lock_holders(pg_url) == 1


async def test_an_unreachable_server_means_no_jobs_here_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ers.fleet")
    url = "postgresql://ers:secret-pw@127.0.0.1:1/ers"
    leader = FleetLeader(PostgresDatabase(url), url, replica="a", retry_interval_s=0.1)
    leader.start()
    try:
        await eventually(lambda: "fleet jobs" in caplog.text, 5, "the warning")
        assert not leader.is_leader
        assert "secret-pw" not in caplog.text
    finally:
        await leader.stop()


async def test_one_replica_at_a_time_holds_the_repository_init_lock(pg_url: str) -> None:
    database = PostgresDatabase(pg_url)
    order: list[str] = []

    async def initialise(replica: str, hold_s: float) -> None:
        async with repository_init_lock(database, pg_url):
            order.append(f"{replica} in")
            await asyncio.sleep(hold_s)
            order.append(f"{replica} out")

    first = asyncio.create_task(initialise("a", 0.5))
    await eventually(lambda: order == ["a in"], 5, "a holding the lock")
    second = asyncio.create_task(initialise("b", 0))
    await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert order == ["a in", "a out", "b in", "b out"]


async def test_an_unreachable_server_is_a_backup_error_naming_it() -> None:
    url = "postgresql://ers:secret-password@127.0.0.1:1/ers"
    with pytest.raises(FleetLockUnavailable, match="127.0.0.1:1") as raised:
        async with repository_init_lock(PostgresDatabase(url), url):
            pass
    assert "secret-password" not in str(raised.value)
