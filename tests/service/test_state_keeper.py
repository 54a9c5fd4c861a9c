"""The state keeper over a real SQLite system_state file: what breaker events it keeps, what
it puts back, and what it does while the store is paused."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backup.emergency import EmergencyCooldown
from backup.models import BackupResult
from service.errors import StoreUnavailable
from service.resilience.breaker import (
    BreakerConfig,
    BreakerEventKind,
    BreakerState,
    CircuitBreaker,
)
from service.resilience.cooldown import Cooldown
from service.resilience.state_keeper import FollowedSwitch, StateKeeper, follow_the_fleet
from service.resilience.system_state import StateInputs, SystemState, SystemStateMachine
from service.stores.base import SystemStateBackend
from service.stores.system_state import SystemStateStore
from tests.service.test_fleet import eventually

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SystemStateStore]:
    store = SystemStateStore.in_file(tmp_path / "system_state.sqlite3")
    store.db.open()
    yield store
    store.db.close()


def team(clock: Clock) -> list[CircuitBreaker]:
    config = BreakerConfig(failure_threshold=1)
    return [
        CircuitBreaker(name, config, clock=clock, wall_clock=clock, span_events=False)
        for name in ("workout", "budget")
    ]


def machine_of(breakers: list[CircuitBreaker], clock: Clock) -> SystemStateMachine:
    """The system state following the breakers, wired as the lifespan wires it."""
    machine = SystemStateMachine(
        StateInputs(
            lambda: {b.name: b.state.value for b in breakers},
            lambda: {},
            lambda: [],
        ),
        recovery_clean_s=60,
        clock=clock,
    )
    for breaker in breakers:
        breaker.subscribe(lambda event: machine.evaluate(), [BreakerEventKind.STATE_TRANSITION])
    return machine


async def test_isolations_are_kept_as_they_change_and_lifted_ones_removed(
    store: SystemStateStore, clock: Clock
) -> None:
    workout, budget = breakers = team(clock)
    keeper = StateKeeper(store, breakers, machine_of(breakers, clock), clock=clock)
    await keeper.start()
    workout.force_open("bad plans", "operator", ttl_s=600)
    budget.disable(source="admin:token")
    await keeper.flush()
    kept = await store.items()
    assert kept["breaker:workout"] == {
        "state": "forced_open",
        "reason": "bad plans",
        "source": "operator",
        "until": NOW + 600,
        "since": NOW,
    }
    assert kept["breaker:budget"] == {"state": "disabled", "source": "admin:token", "since": NOW}

    workout.force_open("worse plans", "responder", ttl_s=60)  # renewed
    await keeper.flush()
    assert (await store.get("breaker:workout"))["reason"] == "worse plans"

    workout.release(source="operator")
    budget.enable()
    await keeper.flush()
    assert set(await store.items()) == {"system"}
    await keeper.stop()


async def test_a_trip_of_a_breaker_that_was_not_isolated_writes_nothing(
    store: SystemStateStore, clock: Clock
) -> None:
    breakers = team(clock)
    keeper = StateKeeper(store, breakers, machine_of(breakers, clock), clock=clock)
    await keeper.start()
    permit = breakers[0].acquire()
    permit.record_failure(TimeoutError("slow"), 0.1)
    assert breakers[0].state is BreakerState.OPEN
    await keeper.flush()
    kept = await store.items()
    assert set(kept) == {"system"}  # the trip moved the system state, and only that is kept
    assert kept["system"]["state"] == "degraded"
    await keeper.stop()


async def test_start_puts_back_isolations_and_drops_the_expired(
    store: SystemStateStore, clock: Clock
) -> None:
    await store.put(
        "breaker:workout",
        {
            "state": "forced_open",
            "reason": "r",
            "source": "alert",
            "until": NOW + 30,
            "since": NOW - 90,
        },
    )
    await store.put(
        "breaker:budget",
        {"state": "forced_open", "reason": "old", "source": "operator", "until": NOW - 1},
    )
    await store.put("breaker:gone", {"state": "disabled", "source": "x"})
    await store.put("system", {"state": "recovery", "reason": "cleared", "since": NOW - 50})
    workout, budget = breakers = team(clock)
    machine = machine_of(breakers, clock)
    keeper = StateKeeper(store, breakers, machine, clock=clock)

    restored = await keeper.start()

    assert workout.forcing is not None and workout.forcing.expires_at_wall == NOW + 30
    # Opened when it was forced, not at this start.
    assert workout.snapshot()["openedAt"] == "2027-01-15T07:58:30.000Z"
    assert budget.state is BreakerState.CLOSED
    assert restored.lines() == [
        "restored 1 forced open: workout until 2027-01-15T08:00:30.000Z (alert: r)",
        "dropped expired: budget forced open until 2027-01-15T07:59:59.000Z",
        "resumed system state recovery since 2027-01-15T07:59:10.000Z",
    ]
    await keeper.flush()
    assert "breaker:budget" not in await store.items()
    # The forced open moved the resumed recovery back to degraded.
    assert machine.state is SystemState.DEGRADED
    await keeper.stop()


async def test_a_start_that_puts_back_two_isolations_keeps_the_emergency_and_its_onset(
    store: SystemStateStore, clock: Clock
) -> None:
    for name in ("workout", "budget"):
        forced = {"state": "forced_open", "reason": "r", "source": "operator", "since": NOW - 90}
        await store.put(f"breaker:{name}", forced)
    why = "most agents isolated: budget, workout"
    await store.put("system", {"state": "emergency", "reason": why, "since": NOW - 90})
    breakers = team(clock)
    machine = machine_of(breakers, clock)
    seen: list[Any] = []
    machine.subscribe(seen.append)
    keeper = StateKeeper(store, breakers, machine, clock=clock)
    clock.now += 5

    await keeper.start()

    # Before: emergency → degraded at the first forced open, → emergency at the second,
    # and the emergency began at this start.
    assert seen == []
    assert (machine.state, machine.since) == (SystemState.EMERGENCY, NOW - 90)
    await keeper.flush()
    assert (await store.items())["system"]["since"] == NOW - 90
    await keeper.stop()


async def test_a_breaker_already_forced_open_by_the_fleet_is_left_as_it_is(
    store: SystemStateStore, clock: Clock
) -> None:
    await store.put(
        "breaker:workout",
        {"state": "forced_open", "reason": "r", "source": "operator", "until": None},
    )
    workout, budget = breakers = team(clock)
    workout.force_open("r (fleet override from a:1)", "operator", ttl_s=100)
    events = []
    workout.subscribe(events.append)
    keeper = StateKeeper(store, breakers, machine_of(breakers, clock), clock=clock)
    restored = await keeper.start()
    assert events == [] and restored.lines() == []
    assert workout.forcing is not None and workout.forcing.reason.endswith("from a:1)")
    await keeper.flush()  # the store follows the fleet's forced open
    kept = await store.get("breaker:workout")
    assert kept["reason"].endswith("from a:1)") and kept["until"] == NOW + 100
    await keeper.stop()


async def test_a_rollback_reports_isolations_kept_in_force(
    store: SystemStateStore, clock: Clock
) -> None:
    workout, budget = breakers = team(clock)
    keeper = StateKeeper(store, breakers, machine_of(breakers, clock), clock=clock)
    await keeper.start()
    budget.disable(source="ana")
    await keeper.flush()
    await store.delete("breaker:budget")  # as if the restored file never had it
    await store.put("breaker:workout", {"state": "forced_open", "reason": "r", "source": "s"})
    assert await keeper.restored_lines() == [
        "restored 1 forced open: workout until released (s: r)",
        "kept in force, not in the restored state: budget disabled",
    ]
    assert (await store.get("breaker:budget"))["state"] == "disabled"
    await keeper.stop()


async def test_a_rollback_of_system_state_keeps_the_switches_in_force(
    store: SystemStateStore, clock: Clock
) -> None:
    """Before: the restored file's switches stayed in the store, and the next start resumed
    them: an emergency-backup cooldown running at the rollback was gone after a restart (a
    second emergency backup within it), and a minimal mode ended since could come back."""
    breakers = team(clock)
    cooldown = EmergencyCooldown(300, clock=clock, wall_clock=clock)
    keeper = StateKeeper(
        store, breakers, machine_of(breakers, clock), clock=clock, switches={"ebk": cooldown}
    )
    await keeper.start()
    taken = BackupResult("5afe7e00", "emergency", ("budgets",), (), datetime.now(UTC), 1.0)
    cooldown.started(taken)
    await keeper.flush()
    await store.delete("ebk")  # the snapshot's file was taken before that backup
    await keeper.restored_lines()
    await keeper.stop()

    restarted = EmergencyCooldown(300, clock=clock, wall_clock=clock)
    again = StateKeeper(
        store, breakers, machine_of(breakers, clock), clock=clock, switches={"ebk": restarted}
    )
    await again.start()
    assert restarted.coalesced() is not None and restarted.remaining() == 300
    await again.stop()


async def test_changes_made_while_the_store_is_paused_are_saved_once_it_reopens(
    store: SystemStateStore, clock: Clock
) -> None:
    workout, _ = breakers = team(clock)
    keeper = StateKeeper(store, breakers, machine_of(breakers, clock), clock=clock)
    await keeper.start()
    await keeper.flush()
    store.db.pause(
        "a rollback is replacing this store (restore, safety snapshot, swap); retry shortly"
    )
    workout.force_open("r", "operator")
    with pytest.raises(StoreUnavailable, match="retry shortly"):
        await keeper.flush()
    store.db.open()
    await keeper.flush()
    assert (await store.get("breaker:workout"))["state"] == "forced_open"
    await keeper.stop()


async def test_a_forced_open_keeps_the_incident_it_isolates_for(
    store: SystemStateStore, clock: Clock
) -> None:
    workout, budget = breakers = team(clock)
    keeper = StateKeeper(store, breakers, machine_of(breakers, clock), clock=clock)
    await keeper.start()
    workout.force_open("database incident", "responder", ttl_s=60, incident="INC_1")
    budget.force_open("looking into it", "operator", ttl_s=60)
    await keeper.flush()
    await keeper.stop()
    kept = await store.items()
    assert kept["breaker:workout"]["incident"] == "INC_1"
    assert "incident" not in kept["breaker:budget"]

    workout, budget = again = team(clock)
    restarted = StateKeeper(store, again, machine_of(again, clock), clock=clock)
    await restarted.start()
    assert workout.forcing is not None and workout.forcing.incident == "INC_1"
    assert budget.forcing is not None and budget.forcing.incident is None
    await restarted.stop()


@contextlib.asynccontextmanager
async def keeping_and_following(
    store: SystemStateBackend,
    switches: dict[str, FollowedSwitch],
    clock: Clock,
    every_s: float = 0.05,
) -> AsyncIterator[StateKeeper]:
    """A replica's state keeper of ``switches``, started, and its poll of the fleet's
    records every ``every_s``, as the lifespan wires them; both stopped after."""
    breakers = team(clock)
    keeper = StateKeeper(store, breakers, machine_of(breakers, clock), switches=switches)
    await keeper.start()
    follows = asyncio.create_task(follow_the_fleet(switches, store, every_s, keeper.pending))
    try:
        yield keeper
    finally:
        follows.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follows
        await keeper.stop()


@contextlib.asynccontextmanager
async def following_replica(
    store: SystemStateBackend, clock: Clock
) -> AsyncIterator[tuple[Cooldown, StateKeeper]]:
    """A replica's cooldown of agent helper, kept by its state keeper and following the
    fleet's record as the lifespan wires them (every 0.05 s here)."""
    cooldown = Cooldown("helper")
    async with keeping_and_following(store, {"cooldown:helper": cooldown}, clock) as keeper:
        yield cooldown, keeper


async def test_replicas_sharing_the_store_follow_each_others_cooldowns(
    store: SystemStateStore, clock: Clock
) -> None:
    """A 429 on one replica left the agent alone there only; a reset on another, which ends
    the cooldown there, left it running on the first."""
    async with (
        following_replica(store, clock) as (first, first_keeper),
        following_replica(store, clock) as (second, second_keeper),
    ):
        first.start(30)
        await first_keeper.flush()
        await eventually(lambda: second.remaining() > 25, 10, "the cooldown on the second")
        await asyncio.sleep(0.3)  # past the second's settle time: its end must be its own
        second.end()
        await second_keeper.flush()
        await eventually(lambda: first.remaining() == 0, 10, "the end on the first replica")


class WritesRefused:
    """A system_state store that reads, and refuses writes while ``refusing``."""

    def __init__(self) -> None:
        self.records: dict[str, Any] = {}
        self.refusing = False

    async def get(self, key: str) -> Any | None:
        return self.records.get(key)

    async def put(self, key: str, value: Any) -> None:
        if self.refusing:
            raise StoreUnavailable("system_state", "the database does not answer")
        self.records[key] = value

    async def delete(self, key: str) -> None:
        if self.refusing:
            raise StoreUnavailable("system_state", "the database does not answer")
        self.records.pop(key, None)

    async def items(self) -> dict[str, Any]:
        return dict(self.records)


async def test_a_change_not_stored_yet_is_not_undone_by_the_fleets_older_record(
    clock: Clock,
) -> None:
    """The fleet's record, read before this replica could store its change (the store
    away longer than the settle time), ended the change here and for the whole fleet."""
    store = WritesRefused()
    async with following_replica(store, clock) as (cooldown, keeper):
        store.refusing = True
        cooldown.start(60)
        await asyncio.sleep(0.5)  # many polls past the settle time, the record still absent
        assert keeper.pending("cooldown:helper") and cooldown.remaining() > 55
        store.refusing = False
        await eventually(lambda: "cooldown:helper" in store.records, 10, "the keeper's retry")
        assert store.records["cooldown:helper"]["agent"] == "helper"
        assert cooldown.remaining() > 50


async def test_a_cooldown_followed_from_another_replica_moves_the_system_state_there(
    store: SystemStateStore, clock: Clock
) -> None:
    """A cooldown started on this replica moves its system state at once (the lifespan
    subscribes the state to it); one this replica followed from another replica's record
    moved nothing, so the chats it turned away answered "systemState": "normal" until the
    state was next looked at."""
    cooldown = Cooldown("helper")
    breakers = team(clock)
    machine = SystemStateMachine(
        StateInputs(
            lambda: {b.name: b.state.value for b in breakers},
            lambda: {},
            lambda: [],
            cooling_down=lambda: {"helper": left} if (left := cooldown.remaining()) else {},
        ),
        recovery_clean_s=60,
        clock=clock,
    )
    cooldown.subscribe(lambda: machine.evaluate())  # as the lifespan wires it
    switches: dict[str, FollowedSwitch] = {"cooldown:helper": cooldown}
    keeper = StateKeeper(store, breakers, machine, switches=switches)
    await keeper.start()
    follows = asyncio.create_task(
        follow_the_fleet(switches, store, 0.05, keeper.pending, machine.evaluate)
    )
    try:
        async with following_replica(store, clock) as (other, other_keeper):
            other.start(30)
            await other_keeper.flush()
            await eventually(lambda: cooldown.remaining() > 25, 10, "the cooldown followed")
            assert (machine.state, machine.reason) == (
                SystemState.DEGRADED,
                "cooling down (rate limited): helper",
            )
            await asyncio.sleep(0.3)  # past the other's settle time: its end is its own
            other.end()
            await other_keeper.flush()
            await eventually(lambda: cooldown.remaining() == 0, 10, "the end followed")
            assert machine.state is SystemState.RECOVERY, machine.reason
    finally:
        follows.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follows
        await keeper.stop()
