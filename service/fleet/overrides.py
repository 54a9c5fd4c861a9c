"""Fleet-wide breaker overrides: a forced open and its release, and a disabled breaker and
its enable, reach every ERS replica.

Only built when the stores live on PostgreSQL. When a breaker of this replica is forced open
or released by an alert, an operator or the responder, or disabled or enabled by an operator,
the override is written to
``ers_fleet.overrides`` and announced with ``NOTIFY ers_breaker_overrides`` in the same
transaction. Every replica listens on one dedicated connection and, on a notification or
every ``poll_interval_s`` (the fallback, and the catch-up after a reconnect), reads the
overrides and applies those it has not seen to its own breakers. Changes applied from the
fleet are not written back, so nothing echoes. Failure counting stays per replica.

A reset (an operator's, or an alert's resolution, whose probe passed) closes the breaker on
every replica, whatever its state there. When a forced open ends (released, or its time is
up) every replica's breaker goes
half-open, but only one replica at a time runs the trial call: the one holding the agent's
lease in the same row. The others answer with fallbacks until the holder's trial succeeds
(and the fleet closes the breaker everywhere) or the lease lapses. A failed trial keeps the
lease with its holder through its next open period, so the fleet backs off as one breaker.

A lost connection is logged once and retried with backoff; the local breakers keep working,
and without the server a replica runs its own trials.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psycopg
from psycopg.rows import DictRow

from service.fleet.lease import TrialLeases
from service.fleet.outage import MAX_BACKOFF_S, Outage, pool_of
from service.fleet.schema import CHANNEL, COMPONENT, MIGRATIONS, READ, UPSERT
from service.resilience.breaker import BreakerEvent, BreakerEventKind, BreakerState, CircuitBreaker
from service.resilience.breaker_permit import ProbeOutcome
from service.settings import Settings
from service.stores import Stores
from service.stores.postgres import CONNECT_TIMEOUT_S, PostgresDatabase
from service.tasks import cancel_and_wait

log = logging.getLogger("ers.fleet")

# The source of a fleet row that closes the breaker everywhere after a reset.
RESET = "reset"
PASSED = ProbeOutcome(None)
# A forced open released within this long of its expiry counts as having expired.
EXPIRY_SLACK_S = 0.5
STOP_FLUSH_S = 3.0


@dataclass(frozen=True, slots=True)
class Override:
    agent: str
    forced: bool
    source: str | None
    reason: str
    # When a forced open ends (wall clock): the time left is worked out as it is written, so
    # a write delayed by an outage does not hold the other replicas forced open longer.
    until: float | None = None
    # A release written because this replica's trial call succeeded: close everywhere.
    trial_passed: bool = False
    # The incident a forced open isolates the agent for.
    incident: str | None = None
    # Disabled by an operator: every call let through, on every replica.
    disabled: bool = False


class FleetOverrides:
    """Shares forced opens and releases of ``breakers`` with every replica on ``database``."""

    def __init__(
        self,
        database: PostgresDatabase,
        url: str,
        breakers: Iterable[CircuitBreaker],
        *,
        poll_interval_s: float = 2.0,
        replica: str | None = None,
        listen: bool = True,
    ) -> None:
        self.database = database
        self._url = url
        self._breakers = {breaker.name: breaker for breaker in breakers}
        self.poll_interval_s = poll_interval_s
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}"
        self.listen = listen
        # Per agent: the override version last applied here or written from here.
        self._seen: dict[str, int] = {}
        # Per agent: when a forced open held here expires (wall clock), None for never.
        self._forced_until: dict[str, float | None] = {}
        self._pending: dict[str, Override] = {}
        self._has_pending = asyncio.Event()
        self._wake = asyncio.Event()
        # Set while a fleet override is applied: its breaker events are not written back.
        self._applying = False
        # Writes and syncs take turns, so a replica never re-applies its own write.
        self._turn = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribes: list[Callable[[], None]] = []
        self.writes = 0
        self._write_outage = Outage("writing an override")
        self._leases = TrialLeases(
            database,
            self._breakers,
            replica=self.replica,
            poll_interval_s=poll_interval_s,
            unwritten=self._unwritten,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, stores: Stores, breakers: Iterable[CircuitBreaker]
    ) -> FleetOverrides | None:
        """The fleet overrides when the stores are on PostgreSQL, else None (SQLite: one
        replica, nothing to share)."""
        if stores.database is None or settings.database_url is None:
            return None
        url = settings.database_url.get_secret_value()
        return cls(stores.database, url, breakers, poll_interval_s=settings.fleet_poll_interval_s)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Migrate ``ers_fleet``, apply the overrides in force, then follow the fleet."""
        applied = await self.database.migrate({COMPONENT: MIGRATIONS})
        if applied:
            log.info("migrated the PostgreSQL schema: fleet v%d", applied[-1][1])
        try:
            await self.sync()
        except psycopg.Error as exc:
            log.warning(
                "fleet breaker overrides: could not read them at start (%s); retrying every %g s",
                self.database.reason(exc),
                self.poll_interval_s,
            )
        for breaker in self._breakers.values():
            kinds = [
                BreakerEventKind.STATE_TRANSITION,
                BreakerEventKind.FORCE_RENEWED,
                BreakerEventKind.RESET,
            ]
            self._unsubscribes.append(breaker.subscribe(self._on_event, kinds))
            breaker.trial_gate = self._leases.gate(breaker.name)
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="fleet-write"),
            asyncio.create_task(self._sync_loop(), name="fleet-sync"),
        ]
        if self.listen:
            self._tasks.append(asyncio.create_task(self._listen_loop(), name="fleet-listen"))

    async def stop(self) -> None:
        """Stop following the fleet; overrides still pending are written if the server
        answers within a few seconds."""
        for unsubscribe in self._unsubscribes:
            unsubscribe()
        self._unsubscribes = []
        for breaker in self._breakers.values():
            breaker.trial_gate = None
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)
        await self._leases.stop()
        if self._pending:
            try:
                async with asyncio.timeout(STOP_FLUSH_S):
                    await self._write_pending()
            except (TimeoutError, psycopg.Error) as exc:
                log.warning(
                    "fleet breaker overrides: %d override(s) of this replica were not shared "
                    "before shutdown (%s); re-issue them on another replica if still needed",
                    len(self._pending),
                    "timed out" if isinstance(exc, TimeoutError) else self.database.reason(exc),
                )

    # --- local changes -> the fleet --------------------------------------------------------

    def _on_event(self, event: BreakerEvent) -> None:
        trial_passed = self._leases.follow(event)
        if self._applying:
            return
        name = event.breaker
        if _is_reset(event):
            # An operator's reset, or an alert's resolution, whose probe passed (or forced):
            # the agent answers, so the breaker closes on every replica, whatever its state
            # there (forced open by the fleet, or opened by that replica's own failures).
            self._forced_until.pop(name, None)
            reason = f"{event.reason} by {event.source or 'an operator'} on {self.replica}"
            self._queue(Override(name, False, RESET, reason, trial_passed=True))
        elif trial_passed:
            reason = (
                f"{event.reason} by {event.source} on {self.replica}"
                if event.source
                else f"the trial call on {self.replica} succeeded"
            )
            self._queue(Override(name, False, "trial", reason, trial_passed=True))
        elif event.to_state is BreakerState.FORCED_OPEN:
            forcing = self._breakers[name].forcing
            until = None if forcing is None else forcing.expires_at_wall
            self._forced_until[name] = until
            incident = None if forcing is None else forcing.incident
            self._queue(Override(name, True, event.source, event.reason, until, incident=incident))
        elif event.to_state is BreakerState.DISABLED:
            self._forced_until.pop(name, None)
            self._queue(Override(name, False, event.source, event.reason, disabled=True))
        elif event.from_state is BreakerState.DISABLED:
            self._queue(Override(name, False, event.source, event.reason))
        elif event.from_state is BreakerState.FORCED_OPEN:
            until = self._forced_until.pop(name, None)
            if until is not None and time.time() >= until - EXPIRY_SLACK_S:
                return  # expired: every replica's own clock lets it go half-open
            self._queue(Override(name, False, event.source, event.reason))

    def _queue(self, override: Override) -> None:
        self._pending[override.agent] = override  # a newer change of an agent supersedes
        self._has_pending.set()

    def _unwritten(self, agent: str) -> bool:
        """Whether this replica's own override of ``agent`` waits for a write that can
        happen (with the server gone the write cannot, and waiting would hold its trial)."""
        return agent in self._pending and not self._write_outage.failing

    async def _write_loop(self) -> None:
        outage, backoff = self._write_outage, 0.5
        while True:
            await self._has_pending.wait()
            try:
                await self._write_pending()
            except psycopg.Error as exc:
                outage.failed(self.database.reason(exc), MAX_BACKOFF_S)
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                continue
            outage.recovered()
            backoff = 0.5

    async def _write_pending(self) -> None:
        pool = pool_of(self.database)
        while self._pending:
            agent, override = next(iter(self._pending.items()))
            async with self._turn:
                # The override and its announcement commit together.
                async with pool.connection() as conn, conn.transaction():
                    cursor = await conn.execute(
                        UPSERT,
                        {
                            "agent": agent,
                            "forced": override.forced,
                            "source": override.source,
                            "reason": override.reason[:500],
                            "ttl_s": None
                            if override.until is None
                            else max(0.001, override.until - time.time()),
                            "replica": self.replica,
                            "trial_passed": override.trial_passed,
                            "incident": override.incident,
                            "disabled": override.disabled,
                        },
                    )
                    row = await cursor.fetchone()
                    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, agent))
                assert row is not None
                self._seen[agent] = int(row["version"])
                self.writes += 1
                if self._pending.get(agent) is override:
                    del self._pending[agent]
        self._has_pending.clear()

    # --- the fleet -> local breakers -------------------------------------------------------

    async def sync(self) -> int:
        """Read the overrides and apply those not seen yet; returns how many were applied."""
        pool = pool_of(self.database)
        async with self._turn:
            async with pool.connection() as conn:
                rows = await (await conn.execute(READ)).fetchall()
            applied = 0
            for row in rows:
                # A local change not written yet is newer than what the fleet holds: once
                # written it is what every replica follows.
                if row["agent"] in self._pending:
                    continue
                if self._seen.get(row["agent"]) != row["version"]:
                    applied += self._apply(row)
            return applied

    def _apply(self, row: DictRow) -> int:
        agent = row["agent"]
        self._seen[agent] = row["version"]
        breaker = self._breakers.get(agent)
        if breaker is None:
            return 0
        left = row["remaining_s"]
        self._applying = True
        try:
            if row["forced"]:
                if left is not None and left <= 0:
                    return 0  # expired: each replica's own TTL already let it go half-open
                reason = f"{row['reason']} (fleet override from {row['replica']})"
                source, incident, since = row["source"] or "fleet", row["incident"], row["since"]
                # Opened when the override was written, on this replica's start too.
                breaker.force_open(
                    reason, source, left, incident=incident, carried=True, since=since
                )
                self._forced_until[agent] = None if left is None else time.time() + left
            elif row["disabled"]:
                if breaker.state is BreakerState.DISABLED:
                    return 0
                breaker.disable(source=row["source"])
                self._forced_until.pop(agent, None)
            elif breaker.state is BreakerState.DISABLED:
                breaker.enable(source=row["source"])
            elif row["trial_passed"] and (
                self._leases.needs_lease(agent)
                or breaker.state is BreakerState.FORCED_OPEN
                or (row["source"] == RESET and breaker.state is not BreakerState.CLOSED)
            ):
                on = f" on {row['replica']}"
                if row["source"] == RESET:  # its probe passed there; one with force is here too
                    force = str(row["reason"]).startswith("reset with force")
                    breaker.reset(force=force, probe=PASSED, source="reset" + on)
                else:  # its trial call passed there: closed here in its words, not as a reset
                    breaker.close(str(row["reason"]), source="trial" + on)
                self._forced_until.pop(agent, None)
            elif breaker.state is BreakerState.FORCED_OPEN:
                breaker.release(source=row["source"])
                self._forced_until.pop(agent, None)
            else:
                return 0
        finally:
            self._applying = False
        log.info(
            "breaker '%s' %s by the fleet (from %s, source %s)",
            agent,
            _applied_words(row, breaker.state),
            row["replica"],
            row["source"],
        )
        return 1

    async def _sync_loop(self) -> None:
        outage = Outage("reading the overrides")
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.sync()
            except psycopg.Error as exc:
                outage.failed(self.database.reason(exc), self.poll_interval_s)
            else:
                outage.recovered()

    async def _listen_loop(self) -> None:
        outage, backoff = Outage(f"listening on {CHANNEL}"), 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    outage.recovered()
                    backoff = 0.5
                    self._wake.set()  # catch up on what was written while not listening
                    async for _ in conn.notifies():
                        self._wake.set()
            except psycopg.Error as exc:
                outage.failed(self.database.reason(exc), MAX_BACKOFF_S)
            await asyncio.sleep(backoff)
            backoff = min(MAX_BACKOFF_S, backoff * 2)


def _is_reset(event: BreakerEvent) -> bool:
    """A reset of the breaker: closed from any state, or its counters cleared when closed."""
    if event.kind is BreakerEventKind.RESET:
        return True
    return (
        event.kind is BreakerEventKind.STATE_TRANSITION
        and event.to_state is BreakerState.CLOSED
        and event.reason in ("reset", "reset with force")
    )


def _applied_words(row: DictRow, state: BreakerState) -> str:
    """What applying a fleet override did to a breaker, for the log."""
    if row["forced"]:
        return "forced open"
    if row["disabled"]:
        return "disabled"
    if row["trial_passed"]:
        return "closed"
    return "enabled" if state is BreakerState.CLOSED else "released"
