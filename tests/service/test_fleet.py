"""Fleet-wide breaker overrides on a real PostgreSQL server: two "replicas" in one process,
each its own breakers, pool and FleetOverrides, sharing one database."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from pydantic import ValidationError

from service.fleet import FleetOverrides, lease
from service.resilience.breaker import BreakerState, CircuitBreaker
from service.resilience.breaker_config import BreakerConfig
from service.resilience.breaker_events import BreakerEventKind
from service.resilience.breaker_permit import CallNotPermitted, Permit, ProbeOutcome
from service.settings import Settings
from service.stores import Stores
from service.stores.postgres import PostgresDatabase

FORCED, HALF_OPEN = BreakerState.FORCED_OPEN, BreakerState.HALF_OPEN
CLOSED, OPEN = BreakerState.CLOSED, BreakerState.OPEN
DISABLED = BreakerState.DISABLED
AGENTS = ("workout", "budget")

Replica = tuple[dict[str, CircuitBreaker], FleetOverrides]
StartReplica = Callable[..., Awaitable[Replica]]


async def eventually(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until ``check()`` holds; fails the test after ``timeout_s``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"{what} did not happen within {timeout_s:g} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def overrides(url: str) -> list[tuple[str, bool, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT agent, forced, version FROM ers_fleet.overrides ORDER BY agent"
        ).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


def listeners(url: str) -> int:
    """The replicas whose LISTEN on the overrides channel is in force, as the server sees."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'idle' AND query = 'LISTEN ers_breaker_overrides'"
        ).fetchone()
    return 0 if row is None else int(row[0])


@pytest.fixture
async def start_replica(pg_url: str) -> AsyncIterator[StartReplica]:
    listening = 0
    async with AsyncExitStack() as stack:

        async def start(
            name: str,
            *,
            poll_interval_s: float = 30.0,
            listen: bool = True,
            config: BreakerConfig | None = None,
        ):
            nonlocal listening
            database = PostgresDatabase(pg_url)
            await database.open([])
            stack.push_async_callback(database.close)
            breakers = {agent: CircuitBreaker(agent, config) for agent in AGENTS}
            fleet = FleetOverrides(
                database,
                pg_url,
                breakers.values(),
                poll_interval_s=poll_interval_s,
                replica=name,
                listen=listen,
            )
            await fleet.start()
            stack.push_async_callback(fleet.stop)
            if listen:
                listening += 1
                await eventually(lambda: listeners(pg_url) >= listening, 10, f"{name} listening")
            return breakers, fleet

        yield start


async def test_a_forced_open_reaches_the_other_replica_by_notify_and_its_release_too(
    start_replica: StartReplica, pg_url: str
) -> None:
    # Polling every 30 s: only a notification can be this quick.
    (a, fleet_a), (b, fleet_b) = await start_replica("a"), await start_replica("b")
    carried: dict[str, list[bool]] = {"a": [], "b": []}
    for name, replica in (("a", a), ("b", b)):
        replica["workout"].subscribe(
            lambda event, name=name: carried[name].append(event.carried),
            [BreakerEventKind.STATE_TRANSITION],
        )
    a["workout"].force_open("alert AgentErrorRatioHigh", "alertmanager", ttl_s=600)
    await eventually(lambda: b["workout"].state is FORCED, 2, "the force on replica b")
    # One forcing, counted once in ers_breaker_forced_opens_total: where it was made.
    assert carried == {"a": [False], "b": [True]}
    forced = b["workout"].snapshot()["forced"]
    assert forced["source"] == "alertmanager"
    assert forced["reason"] == "alert AgentErrorRatioHigh (fleet override from a)"
    assert b["budget"].state is BreakerState.CLOSED

    a["workout"].release(source="alertmanager")
    await eventually(lambda: b["workout"].state is HALF_OPEN, 2, "the release on replica b")
    await asyncio.sleep(0.3)  # room for an echo, if there were one
    assert (fleet_a.writes, fleet_b.writes) == (2, 0)
    assert overrides(pg_url) == [("workout", False, 2)]


async def test_a_disabled_breaker_is_disabled_on_every_replica_and_enabled_on_every_one(
    start_replica: StartReplica, pg_url: str
) -> None:
    # The operator's "let every call through" holds for the fleet, as a forced open does:
    # kept per replica it reached the others only when they restarted (from the shared
    # system_state store), and an enable on one replica left the others disabled.
    (a, fleet_a), (b, fleet_b) = await start_replica("a"), await start_replica("b")
    a["workout"].disable(source="admin:token")
    await eventually(lambda: b["workout"].state is DISABLED, 2, "the disable on replica b")
    assert b["budget"].state is CLOSED
    b["workout"].enable(source="admin:token")
    await eventually(lambda: a["workout"].state is CLOSED, 2, "the enable on replica a")
    await asyncio.sleep(0.3)  # room for an echo, if there were one
    assert (fleet_a.writes, fleet_b.writes) == (1, 1)
    assert overrides(pg_url) == [("workout", False, 2)]
    # A replica starting later follows what the fleet says last.
    a["workout"].disable(source="admin:token")
    await eventually(lambda: b["workout"].state is DISABLED, 2, "the second disable on b")
    c, _ = await start_replica("c")
    assert c["workout"].state is DISABLED


async def test_polling_carries_overrides_when_a_replica_does_not_listen(
    start_replica: StartReplica,
) -> None:
    a, _ = await start_replica("a")
    b, _ = await start_replica("b", poll_interval_s=0.2, listen=False)
    a["budget"].force_open("operator drill", "operator")
    await eventually(lambda: b["budget"].state is FORCED, 1.5, "the polled force on b")
    assert b["budget"].snapshot()["forced"]["expiresAt"] is None
    a["budget"].release(source="operator")
    await eventually(lambda: b["budget"].state is HALF_OPEN, 1.5, "the polled release on b")


async def test_a_change_on_the_receiving_replica_is_shared_back_without_echo(
    start_replica: StartReplica, pg_url: str
) -> None:
    (a, fleet_a), (b, fleet_b) = await start_replica("a"), await start_replica("b")
    a["workout"].force_open("alert", "alertmanager", ttl_s=600)
    await eventually(lambda: b["workout"].state is FORCED, 2, "the force on b")
    # The operator releases it on b: a follows, and nobody writes it back.
    b["workout"].release(source="operator")
    await eventually(lambda: a["workout"].state is HALF_OPEN, 2, "the release on a")
    await asyncio.sleep(0.3)
    assert (fleet_a.writes, fleet_b.writes) == (1, 1)
    assert overrides(pg_url) == [("workout", False, 2)]


async def test_the_expiry_is_honoured_everywhere_and_not_written_as_a_release(
    start_replica: StartReplica, pg_url: str
) -> None:
    (a, fleet_a), (b, _) = await start_replica("a"), await start_replica("b")
    a["workout"].force_open("isolate for a moment", "responder", ttl_s=1.0)
    await eventually(lambda: b["workout"].state is FORCED, 0.8, "the force on b")
    assert b["workout"].snapshot()["forced"]["expiresAt"] is not None
    await asyncio.sleep(1.1)
    for breaker in (a["workout"], b["workout"]):
        with pytest.raises(CallNotPermitted):  # noticed on the next call; the lease is asked
            breaker.acquire()
        assert breaker.state is HALF_OPEN
    await asyncio.sleep(0.3)
    assert fleet_a.writes == 1
    assert overrides(pg_url) == [("workout", True, 1)]
    # A replica started after the expiry is not forced by the stale row.
    c, _ = await start_replica("c")
    assert c["workout"].state is BreakerState.CLOSED


async def test_a_replica_starting_later_applies_the_overrides_in_force(
    start_replica: StartReplica,
) -> None:
    a, fleet_a = await start_replica("a")
    a["budget"].force_open("alert", "alertmanager", ttl_s=600)
    await asyncio.sleep(3)
    # A renewal (the alert firing again) keeps the opening, and writes the row again.
    a["budget"].force_open("alert", "alertmanager", ttl_s=600)
    await eventually(lambda: fleet_a.writes == 2, 2, "the renewal's write")
    await asyncio.sleep(1.5)  # b starts well after: its own start is not taken for the opening
    b, _ = await start_replica("b")
    assert b["budget"].state is FORCED
    # Opened when it was first forced: not when b started (a restarted replica said its
    # start), nor when it was renewed (the row's last write).
    opened = [datetime.fromisoformat(r["budget"].snapshot()["openedAt"]) for r in (a, b)]
    assert abs((opened[0] - opened[1]).total_seconds()) < 2.0, opened


async def test_a_force_after_an_expired_one_is_a_new_opening_everywhere(
    start_replica: StartReplica,
) -> None:
    (a, _), (b, _) = await start_replica("a"), await start_replica("b")
    a["workout"].force_open("first alert", "alertmanager", ttl_s=1.0)
    await eventually(lambda: b["workout"].state is FORCED, 0.8, "the force on b")
    await asyncio.sleep(3.5)  # expired: its row stays forced (an expiry is not written)
    for breaker in (a["workout"], b["workout"]):
        with pytest.raises(CallNotPermitted):
            breaker.acquire()
        assert breaker.state is HALF_OPEN
    a["workout"].force_open("second alert", "alertmanager", ttl_s=600)
    await eventually(lambda: b["workout"].state is FORCED, 2, "the second force on b")
    # Opened now on both: b said the expired forcing's opening, 3.5 s before.
    opened = [datetime.fromisoformat(r["workout"].snapshot()["openedAt"]) for r in (a, b)]
    assert abs((opened[0] - opened[1]).total_seconds()) < 2.0, opened


async def test_a_lost_listen_connection_is_reopened_and_the_app_keeps_working(
    start_replica: StartReplica, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ers.fleet")
    a, _ = await start_replica("a")
    b, _ = await start_replica("b")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query = 'LISTEN ers_breaker_overrides' AND pid <> pg_backend_pid()"
        )
    await asyncio.sleep(0.2)
    assert b["workout"].acquire() is not None  # local breakers keep working
    await eventually(lambda: listeners(pg_url) == 2, 5, "both replicas listening again")
    a["workout"].force_open("alert", "alertmanager", ttl_s=600)
    await eventually(lambda: b["workout"].state is FORCED, 5, "the force after a reconnect")
    assert "listening on ers_breaker_overrides failed" in caplog.text
    assert "works again" in caplog.text


def test_on_sqlite_there_is_no_fleet_to_share_with(tmp_path: Path) -> None:
    settings = Settings(env="test", data_dir=tmp_path / "data")
    stores = Stores.from_settings(settings)
    assert FleetOverrides.from_settings(settings, stores, [CircuitBreaker("workout")]) is None


@pytest.mark.parametrize("value", [0, -1, 301])
def test_the_poll_interval_must_be_positive_and_at_most_five_minutes(
    tmp_path: Path, value: float
) -> None:
    with pytest.raises(ValidationError, match="fleet_poll_interval_s"):
        Settings(env="test", data_dir=tmp_path, fleet_poll_interval_s=value)


async def one_trial(
    a: CircuitBreaker, b: CircuitBreaker, timeout_s: float = 3.0
) -> tuple[CircuitBreaker, Permit]:
    """Calls on both replicas until one of them is admitted (that breaker and its permit);
    asserts that it is never both."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        admitted = []
        for breaker in (a, b):
            with contextlib.suppress(CallNotPermitted):
                admitted.append((breaker, breaker.acquire()))
        assert len(admitted) <= 1, "both replicas admitted a trial call"
        if admitted:
            return admitted[0]
        await asyncio.sleep(0.02)
    pytest.fail(f"no replica admitted a trial call within {timeout_s:g} s")


async def test_only_the_lease_holder_runs_the_trial_and_its_success_closes_every_replica(
    start_replica: StartReplica, pg_url: str
) -> None:
    (a, _), (b, _) = await start_replica("a"), await start_replica("b")
    a["workout"].force_open("alert", "alertmanager", ttl_s=600)
    await eventually(lambda: b["workout"].state is FORCED, 2, "the force on b")
    a["workout"].release(source="alertmanager")
    await eventually(lambda: b["workout"].state is HALF_OPEN, 2, "the release on b")

    admitted, trial = await one_trial(a["workout"], b["workout"])
    holder, other = (a, b) if admitted is a["workout"] else (b, a)
    for _ in range(10):  # while the trial runs, the other replica keeps answering fallbacks
        with pytest.raises(CallNotPermitted, match="runs on another replica"):
            other["workout"].acquire()
        await asyncio.sleep(0.02)
    with psycopg.connect(pg_url) as conn:
        lease = conn.execute("SELECT lease_holder FROM ers_fleet.overrides").fetchone()
    assert lease == ("a" if holder is a else "b",)

    trial.record_success(0.01)
    assert holder["workout"].state is CLOSED
    await eventually(lambda: other["workout"].state is CLOSED, 2, "the close on the other")
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT forced, trial_passed, lease_holder FROM ers_fleet.overrides"
        ).fetchone()
    assert row == (False, True, None)
    # The other's history says the trial closed it there, not a reset with force (nobody
    # forced one).
    closed, name = other["workout"].history()[-1], "a" if holder is a else "b"
    assert (closed.from_state, closed.to_state) == (HALF_OPEN, CLOSED)
    assert (closed.source, closed.reason) == (
        f"trial on {name}",
        f"the trial call on {name} succeeded",
    )


async def test_a_reset_whose_probe_passed_closes_every_replica_whoever_holds_the_lease(
    start_replica: StartReplica, pg_url: str
) -> None:
    """An alert's resolution handled on the replica without the lease closed its breaker
    by the probe; the other stayed half-open for good, turning chats away while it waited
    for a trial that only the lease holder could run."""
    (a, _), (b, _) = await start_replica("a"), await start_replica("b")
    a["workout"].force_open("alert", "alertmanager", ttl_s=600)
    await eventually(lambda: b["workout"].state is FORCED, 2, "the force on b")
    a["workout"].release(source="alertmanager")
    await eventually(lambda: b["workout"].state is HALF_OPEN, 2, "the release on b")

    def holder() -> str | None:
        with psycopg.connect(pg_url) as conn:
            row = conn.execute("SELECT lease_holder FROM ers_fleet.overrides").fetchone()
        return None if row is None else row[0]

    await eventually(lambda: holder() is not None, 5, "a lease taken")
    with_lease, without = (a, b) if holder() == "a" else (b, a)
    without["workout"].reset(probe=ProbeOutcome(None), source="alertmanager")
    assert without["workout"].state is CLOSED
    await eventually(lambda: with_lease["workout"].state is CLOSED, 5, "the close on the other")
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT trial_passed, lease_holder FROM ers_fleet.overrides").fetchone()
    assert row == (True, None)


async def test_a_reset_of_a_forced_open_closes_every_replica_not_half_open(
    start_replica: StartReplica, pg_url: str
) -> None:
    """It was shared as a release: the other replica went half-open and turned chats away
    until a trial ran there."""
    (a, _), (b, fleet_b) = await start_replica("a"), await start_replica("b")
    a["workout"].force_open("isolated by an operator", "admin:token", ttl_s=600)
    await eventually(lambda: b["workout"].state is FORCED, 2, "the force on b")
    b["workout"].reset(probe=ProbeOutcome(None), source="admin:token")
    await eventually(lambda: a["workout"].state is CLOSED, 2, "the close on a")
    closed = a["workout"].history()[-1]
    # Reset where its probe passed: not said to be a reset with force here.
    assert (closed.source, closed.reason) == ("reset on b", "reset")
    await asyncio.sleep(0.3)  # room for an echo, if there were one
    assert b["workout"].state is CLOSED and fleet_b.writes == 1


async def test_a_reset_closes_a_breaker_another_replica_opened_by_its_own_failures(
    start_replica: StartReplica,
) -> None:
    """Reset on the replica where the breaker was closed changed nothing there, and so was
    shared with no one: the other kept turning chats away for its whole open time."""
    config = BreakerConfig(failure_threshold=1, open_duration_s=600, max_open_duration_s=600)
    (a, _), (b, _) = (
        await start_replica("a", config=config),
        await start_replica("b", config=config),
    )
    permit = a["workout"].acquire()
    permit.record_failure(RuntimeError("the agent's database is down"), 0.01)
    assert a["workout"].state is OPEN and b["workout"].state is CLOSED
    b["workout"].reset(probe=ProbeOutcome(None), source="admin:token")
    await eventually(lambda: a["workout"].state is CLOSED, 2, "the close on a")
    assert b["budget"].state is CLOSED and a["budget"].state is CLOSED


async def test_a_forced_open_written_late_ends_when_it_ends_where_it_was_made(
    start_replica: StartReplica,
) -> None:
    """Its time left was worked out when it was queued: written 7 s late (the server was
    down), it held the other replicas forced open 7 s longer."""
    (a, fleet_a), (b, _) = await start_replica("a"), await start_replica("b")
    async with fleet_a._turn:  # the write waits, as for a server that is away
        a["workout"].force_open("isolated", "admin:token", ttl_s=300)
        await asyncio.sleep(2)
    await eventually(lambda: b["workout"].state is FORCED, 5, "the force on b")
    ends = [r["workout"].forcing.expires_at_wall for r in (a, b)]  # type: ignore[union-attr]
    assert abs(ends[0] - ends[1]) < 1.0, ends


async def test_a_failed_trial_keeps_the_lease_with_its_holder_through_the_open_period(
    start_replica: StartReplica,
) -> None:
    config = BreakerConfig(open_duration_s=0.5, half_open_max_wait_s=2.0)
    (a, _), (b, _) = (
        await start_replica("a", config=config),
        await start_replica("b", config=config),
    )
    a["budget"].force_open("alert", "alertmanager", ttl_s=0.5)
    await eventually(lambda: b["budget"].state is FORCED, 0.4, "the force on b")
    await asyncio.sleep(0.6)

    admitted, first = await one_trial(a["budget"], b["budget"])
    holder, other = (a, b) if admitted is a["budget"] else (b, a)
    first.record_failure(RuntimeError("still down"), 0.01)
    assert holder["budget"].state is OPEN
    # Past the open period only the holder tries again; the other never gets a trial.
    admitted, second = await one_trial(a["budget"], b["budget"])
    assert admitted is holder["budget"]
    second.record_success(0.01)
    await eventually(lambda: other["budget"].state is CLOSED, 2, "the close on the other")


async def test_without_a_shared_row_a_replica_runs_its_own_trial(
    start_replica: StartReplica, pg_url: str
) -> None:
    # An override nobody can see (its row gone) must not leave the breaker waiting for a
    # lease nobody can grant.
    a, fleet = await start_replica("a")
    a["workout"].force_open("isolate for a moment", "responder", ttl_s=0.5)
    await eventually(lambda: fleet.writes == 1, 2, "the write of the override")
    with psycopg.connect(pg_url) as conn:
        conn.execute("DELETE FROM ers_fleet.overrides")
    await asyncio.sleep(0.6)
    admitted: list[Permit] = []

    def trial() -> bool:
        with contextlib.suppress(CallNotPermitted):
            admitted.append(a["workout"].acquire())
        return bool(admitted)

    await eventually(trial, 3, "a trial call without a lease row")


async def test_a_call_after_the_lease_lapsed_asks_for_it_first_and_runs_the_trial(
    start_replica: StartReplica, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the lease taken at the release lapsed with no call; each later call was
    turned away while it was asked for again in the background, and lapsed again before the
    next: with calls further apart than the lease (15 s), the breaker stayed half-open."""
    monkeypatch.setattr(lease, "LEASE_MARGIN_S", 0.0)
    config = BreakerConfig(half_open_max_wait_s=0.3)
    (a, _), (b, _) = (
        await start_replica("a", config=config),
        await start_replica("b", config=config),
    )
    a["workout"].force_open("alert", "alertmanager", ttl_s=600)
    await eventually(lambda: b["workout"].state is FORCED, 2, "the force on b")
    a["workout"].release(source="alertmanager")
    await eventually(lambda: b["workout"].state is HALF_OPEN, 2, "the release on b")
    await asyncio.sleep(1.0)  # both asked for the lease at the release; it lapsed since

    gate = b["workout"].trial_gate
    assert gate is not None
    await gate.ready()
    trial = b["workout"].acquire()  # before: CallNotPermitted, "runs on another replica"
    trial.record_success(0.01)
    assert b["workout"].state is CLOSED
    await eventually(lambda: a["workout"].state is CLOSED, 2, "the close on the other")
