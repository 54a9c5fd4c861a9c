"""The half-open trial lease of fleet-wide breaker overrides (see ``overrides``): when a
forced open ends, only the replica holding an agent's lease in its ``ers_fleet.overrides``
row admits the trial call; a failed trial keeps the lease through the open period, and a
replica with no row, or no server, runs its own trial."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field

import psycopg

from service.fleet.outage import MAX_BACKOFF_S, Outage, pool_of
from service.fleet.schema import CLAIM_LEASE, HAS_ROW
from service.resilience.breaker import BreakerEvent, BreakerEventKind, BreakerState, CircuitBreaker
from service.stores.postgres import PostgresDatabase
from service.tasks import cancel_and_wait

# How long a trial lease lasts beyond the trial call's own limit (half_open_max_wait_s).
LEASE_MARGIN_S = 5.0
# How long a call waits for a lease asked for before it (one statement, when granted).
CLAIM_WAIT_S = 0.5


@dataclass(eq=False)
class TrialLeases:
    """Which half-open trials this replica may run. ``follow`` keeps the bookkeeping of each
    breaker event, ``may_run_trial`` is each breaker's trial gate, ``needs_lease`` says
    whether an agent's trial waits for the fleet, ``stop`` ends the claims in flight."""

    database: PostgresDatabase
    breakers: Mapping[str, CircuitBreaker]
    _: KW_ONLY
    replica: str
    poll_interval_s: float
    # Whether this replica's own override of an agent waits to be written.
    unwritten: Callable[[str], bool]
    # Agents whose breaker left a fleet-wide forced open: their trials need the lease.
    _needs_lease: set[str] = field(default_factory=set, init=False)
    # Per agent: until when (monotonic) this replica holds the trial lease.
    _lease_until: dict[str, float] = field(default_factory=dict, init=False)
    _claims: dict[str, asyncio.Task[None]] = field(default_factory=dict, init=False)

    def needs_lease(self, agent: str) -> bool:
        return agent in self._needs_lease

    def follow(self, event: BreakerEvent) -> bool:
        """Keep the lease bookkeeping of ``event``'s breaker; True when this replica closed
        a breaker that left a fleet-wide forced open: a trial under its lease, or a reset
        whose probe passed (an alert's resolution, an operator), lease or not. The other
        replicas close theirs on that word; without it they stayed half-open, their trials
        held back by a lease that only a trial here would have given up."""
        name, to_state = event.breaker, event.to_state
        if event.kind is not BreakerEventKind.STATE_TRANSITION:
            return False
        if event.from_state is BreakerState.FORCED_OPEN and to_state is BreakerState.HALF_OPEN:
            self._needs_lease.add(name)
            self._lease_until.pop(name, None)
            self._claim_soon(name)
        elif to_state is BreakerState.OPEN and name in self._needs_lease:
            if self._holds_lease(name):
                # A failed trial: keep the lease through the open period so that this
                # replica alone tries again when it ends.
                breaker = self.breakers[name]
                ttl_s = float(breaker.snapshot()["openDurationS"]) + _lease_ttl_s(breaker)
                self._claim_soon(name, ttl_s)
        elif to_state is not BreakerState.HALF_OPEN:
            needed = name in self._needs_lease
            self._needs_lease.discard(name)
            self._lease_until.pop(name, None)
            return needed and to_state is BreakerState.CLOSED
        return False

    def gate(self, agent: str) -> _Gate:
        """The agent's breaker's trial gate (``TrialGate``)."""
        return _Gate(self, agent)

    async def claim_now(self, agent: str) -> None:
        """Before each call to the agent: where its breaker's trial needs the lease
        and no claim is under way, ask for it now, for up to ``CLAIM_WAIT_S``. Before, the
        gate asked only in the background as it turned the call away: a lease given up by
        then (no call within its 15 s) was asked for by the next call, and turned that one
        away too, so with calls further apart than that, every call was turned away and the
        breaker stayed half-open."""
        if agent not in self._needs_lease or self._holds_lease(agent):
            return
        running = self._claims.get(agent)
        if running is not None and not running.done():
            return  # asked for already and not given (another replica holds it): no wait
        self._claim_soon(agent)
        # Not given in time, the gate turns the call away, as before; a claim cancelled (a
        # stop) is no error of this call's.
        await asyncio.wait({self._claims[agent]}, timeout=CLAIM_WAIT_S)

    def may_run_trial(self, agent: str) -> bool:
        """The breaker's trial gate: free unless the agent left a fleet-wide forced open;
        then only while this replica holds the lease (asked for when it does not)."""
        if agent not in self._needs_lease or self._holds_lease(agent):
            return True
        self._claim_soon(agent)
        return False

    async def stop(self) -> None:
        claims, self._claims = list(self._claims.values()), {}
        await cancel_and_wait(*claims)

    def _holds_lease(self, agent: str) -> bool:
        until = self._lease_until.get(agent)
        return until is not None and time.monotonic() < until

    def _claim_soon(self, agent: str, ttl_s: float | None = None) -> None:
        running = self._claims.get(agent)
        if running is not None and not running.done():
            if ttl_s is None:
                return
            running.cancel()
        task = asyncio.get_running_loop().create_task(
            self._claim(agent, ttl_s), name=f"fleet-lease-{agent}"
        )
        self._claims[agent] = task

    async def _claim(self, agent: str, ttl_s: float | None) -> None:
        """Ask for the agent's lease until this replica holds it or no longer needs it."""
        breaker = self.breakers[agent]
        ttl_s = ttl_s or _lease_ttl_s(breaker)
        extending = breaker.state is BreakerState.OPEN
        outage = Outage(f"asking for the trial lease of '{agent}'")
        while agent in self._needs_lease and (extending or not self._holds_lease(agent)):
            if self.unwritten(agent):
                # This replica's own override of the agent is not written yet: the lease
                # is asked for on the row the fleet will see. (With the server gone, the
                # claim below fails and this replica runs its own trial.)
                await asyncio.sleep(0.05)
                continue
            started = time.monotonic()
            try:
                granted = await self._take_lease(agent, ttl_s)
            except psycopg.Error as exc:
                # Without the server there is no fleet to coordinate with: run the trial here.
                outage.failed(self.database.reason(exc), MAX_BACKOFF_S)
                granted = True
            else:
                outage.recovered()
            if granted:
                self._lease_until[agent] = started + ttl_s
                return
            await asyncio.sleep(min(1.0, self.poll_interval_s))

    async def _take_lease(self, agent: str, ttl_s: float) -> bool:
        params = {"agent": agent, "replica": self.replica, "ttl_s": ttl_s}
        async with pool_of(self.database).connection() as conn:
            if await (await conn.execute(CLAIM_LEASE, params)).fetchone() is not None:
                return True
            # No row at all: the forced open was never shared, nothing to coordinate.
            return await (await conn.execute(HAS_ROW, params)).fetchone() is None


@dataclass(frozen=True, slots=True)
class _Gate:
    leases: TrialLeases
    agent: str

    def __call__(self) -> bool:
        return self.leases.may_run_trial(self.agent)

    async def ready(self) -> None:
        await self.leases.claim_now(self.agent)


def _lease_ttl_s(breaker: CircuitBreaker) -> float:
    return breaker.config.half_open_max_wait_s + LEASE_MARGIN_S
