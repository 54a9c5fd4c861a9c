"""What an operator or an alert decided outlives the process: the breakers' isolations
(forced opens with their reason, source and expiry; disabled breakers), the system state and
other kept switches (minimal response mode, with its end and reason) are kept in the
``system_state`` component store and put back at start.

The keeper is a listener: breakers and the system state machine publish their changes, the
keeper marks the changed key and a writer task stores its current value (a burst of changes
is one write per key). ``flush()`` waits until everything marked is stored, so an operator's
reply can say the isolation is saved. At start, and after a rollback of ``system_state``,
``restore()`` reads the records back: forced opens whose time is up are dropped, the others
are forced open again until the same moment.

On PostgreSQL the fleet's override table (``service.fleet``) already holds forced opens
across replicas and restarts, and it is read before the keeper starts: a breaker the fleet
forced open is left as the fleet says (forcing it again would be shared back to the fleet as
a new override), the keeper only puts back what the fleet did not. A rollback forces the
snapshot's isolations open here, and the fleet shares them from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from service.errors import StoreUnavailable
from service.resilience.breaker import BreakerEvent, BreakerEventKind, CircuitBreaker
from service.resilience.breaker_config import BreakerState
from service.resilience.breaker_events import iso_utc
from service.resilience.system_state import StateTransition, SystemState, SystemStateMachine
from service.stores.base import SystemStateBackend
from service.tasks import cancel_and_wait

log = logging.getLogger("ers.state_keeper")

BREAKER_PREFIX = "breaker:"
SYSTEM_KEY = "system"
RETRY_MAX_S = 30.0
# How long a reply that says a change is saved waits for the store. PostgreSQL lets a write
# wait for another session's lock for as long as it is held (SQLite gives up after 2 s): an
# alert's isolation would stay unanswered, neither done nor said not kept, for that long.
SAVE_WAIT_S = 5.0


class KeptSwitch(Protocol):
    """A switch kept under its own key (minimal response mode): its record, None when it is
    off; put back at start; ``subscribe`` calls back on every change."""

    def record(self) -> dict[str, Any] | None: ...

    def resume(self, record: dict[str, Any]) -> str | None: ...

    def subscribe(self, listener: Callable[[], None]) -> None: ...


class FollowedSwitch(KeptSwitch, Protocol):
    """A kept switch every replica of a fleet matches to the shared record."""

    def follow(self, record: dict[str, Any] | None, settle_s: float) -> str | None: ...


async def follow_the_fleet(
    switches: dict[str, FollowedSwitch],
    state: SystemStateBackend,
    every_s: float,
    pending: Callable[[str], bool],
    changed: Callable[[], None] = lambda: None,
) -> None:
    """On PostgreSQL each replica matches its switches to the records kept in the shared
    system_state store, every ``every_s``: minimal mode the responder of one replica turned
    on, or an operator ended on one; an agent's rate-limit cooldown one replica was asked
    for, or a reset ended. Without this the other replicas kept calling the agents, and what
    ended on one stayed on the others. A key ``pending`` here (changed, not stored yet) is
    left as it is. ``changed`` is called once a poll has changed a switch: a cooldown
    followed here moves the system state as one started here does."""
    while True:
        await asyncio.sleep(every_s)
        try:
            records = await state.items()
        except StoreUnavailable as exc:
            log.warning("the fleet's kept switches not read: %s", exc)
            continue
        followed = False
        for key, switch in switches.items():
            if pending(key):  # changed here and not stored yet (the store was away): it stands
                continue
            if (words := switch.follow(records.get(key), settle_s=2 * every_s)) is not None:
                log.warning("%s as another replica set it: %s", key, words)
                followed = True
        if followed:
            changed()


@dataclass(frozen=True, slots=True)
class Restored:
    """What ``restore()`` put back, in words an operator reads in a rollback's result."""

    forced: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    system_state: str | None = None
    switches: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        lines = []
        if self.forced:
            noun = "forced open" if len(self.forced) == 1 else "forced opens"
            lines.append(f"restored {len(self.forced)} {noun}: {'; '.join(self.forced)}")
        if self.disabled:
            noun = "disabled breaker" if len(self.disabled) == 1 else "disabled breakers"
            lines.append(f"restored {len(self.disabled)} {noun}: {', '.join(self.disabled)}")
        if self.dropped:
            lines.append(f"dropped expired: {'; '.join(self.dropped)}")
        if self.kept:
            lines.append(f"kept in force, not in the restored state: {', '.join(self.kept)}")
        if self.system_state:
            lines.append(f"resumed system state {self.system_state}")
        lines.extend(f"resumed {switch}" for switch in self.switches)
        return lines


def breaker_record(
    breaker: CircuitBreaker, source: str | None, now: float
) -> dict[str, Any] | None:
    """The record of a breaker's isolation, or None when it is not isolated."""
    forcing = breaker.forcing
    if forcing is not None:
        record: dict[str, Any] = {
            "state": BreakerState.FORCED_OPEN.value,
            "reason": forcing.reason,
            "source": forcing.source,
            "until": forcing.expires_at_wall,
            # When the isolation began: not this renewal's, nor this start's, time.
            "since": forcing.since,
        }
        if forcing.incident is not None:
            record["incident"] = forcing.incident
        return record
    if breaker.state is BreakerState.DISABLED:
        return {"state": BreakerState.DISABLED.value, "source": source, "since": now}
    return None


class StateKeeper:
    def __init__(
        self,
        store: SystemStateBackend,
        breakers: Iterable[CircuitBreaker],
        machine: SystemStateMachine,
        *,
        switches: dict[str, KeptSwitch] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._switches = switches or {}
        self._breakers = {breaker.name: breaker for breaker in breakers}
        self._machine = machine
        self._clock = clock
        # Changed keys not stored yet, and the records to store for them (computed when the
        # change happened, so the source of a disable is known).
        self._dirty: dict[str, dict[str, Any] | None] = {}
        self._wake = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self._unsubscribes: list[Callable[[], None]] = []
        self._failing: str | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> Restored:
        """Put back what was kept, then follow every change."""
        restored = await self.restore(at_start=True)
        for breaker in self._breakers.values():
            kinds = [BreakerEventKind.STATE_TRANSITION, BreakerEventKind.FORCE_RENEWED]
            self._unsubscribes.append(breaker.subscribe(self._on_breaker_event, kinds))
        self._machine.subscribe(self._on_state_change)
        self._mark(SYSTEM_KEY, self._system_record())
        for key, switch in self._switches.items():
            switch.subscribe(lambda key=key, switch=switch: self._mark(key, switch.record()))
        self._writer = asyncio.create_task(self._write_loop(), name="state-keeper")
        return restored

    async def stop(self) -> None:
        """Stop following changes and store what is still marked."""
        for unsubscribe in self._unsubscribes:
            unsubscribe()
        self._unsubscribes = []
        await cancel_and_wait(self._writer)
        self._writer = None
        try:
            await self.flush()
        except StoreUnavailable as exc:
            log.error(
                "%d breaker isolation(s) or the system state were not saved before shutdown "
                "(%s); check them after the next start",
                len(self._dirty),
                exc,
            )

    # --- changes -> the store --------------------------------------------------------------

    def _on_breaker_event(self, event: BreakerEvent) -> None:
        breaker = self._breakers[event.breaker]
        record = breaker_record(breaker, event.source, event.at)
        key = BREAKER_PREFIX + breaker.name
        if record is None and event.from_state not in (
            BreakerState.FORCED_OPEN,
            BreakerState.DISABLED,
        ):
            return  # closed / open / half-open moves of a breaker that was not isolated
        self._mark(key, record)

    def _on_state_change(self, transition: StateTransition) -> None:
        self._mark(SYSTEM_KEY, self._system_record())

    def _system_record(self) -> dict[str, Any]:
        machine = self._machine
        return {"state": machine.state.value, "reason": machine.reason, "since": machine.since}

    def pending(self, key: str) -> bool:
        """Whether a change of ``key`` made here waits to be stored."""
        return key in self._dirty

    def _mark(self, key: str, record: dict[str, Any] | None) -> None:
        self._dirty[key] = record
        self._wake.set()

    async def flush(self) -> None:
        """Store every marked change; raises StoreUnavailable (the changes stay marked)."""
        async with self._write_lock:
            while self._dirty:
                key, record = next(iter(self._dirty.items()))
                if record is None:
                    await self._store.delete(key)
                else:
                    await self._store.put(key, record)
                if self._dirty.get(key) is record:
                    del self._dirty[key]

    async def kept(self, key: str) -> Any | None:
        """The stored record of ``key``: on PostgreSQL the fleet's, which another replica
        may have written since this one last followed it. Raises StoreUnavailable."""
        return await self._store.get(key)

    async def saved(self) -> str | None:
        """``flush()`` for an operator's reply: None once every change is stored, else why
        not (the changes stay marked; the writer retries them in the background)."""
        try:
            async with asyncio.timeout(SAVE_WAIT_S):
                await self.flush()
        except StoreUnavailable as exc:
            return str(exc)
        except TimeoutError:
            return (
                f"the system_state store did not take the write within {SAVE_WAIT_S:g} s: "
                "another session may hold a lock on its table (see pg_stat_activity)"
            )
        return None

    async def _write_loop(self) -> None:
        backoff = 0.5
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except StoreUnavailable as exc:
                if self._failing is None:
                    log.warning("saving breaker isolations failed (%s); retrying", exc)
                self._failing = str(exc)
                await asyncio.sleep(backoff)
                backoff = min(RETRY_MAX_S, backoff * 2)
                self._wake.set()
                continue
            if self._failing is not None:
                log.info("breaker isolations are saved again")
                self._failing = None
            backoff = 0.5

    # --- the store -> breakers -------------------------------------------------------------

    async def restore(self, *, at_start: bool = False) -> Restored:
        """Put back the kept isolations (and, at start, the system state). Isolations in
        force now stay, also when the kept state lacks them; the store then holds them. The
        system state moves once, from the kept one to what all of them call for."""
        records = await self._store.items()
        with self._machine.settling():
            return self._restore(records, at_start=at_start)

    def _restore(self, records: dict[str, Any], *, at_start: bool) -> Restored:
        now = self._clock()
        # The system state first: the breakers put back below move it on from there.
        system = self._resume_system(records.get(SYSTEM_KEY)) if at_start else None
        switches = self._resume_switches(records) if at_start else ()
        forced: list[str] = []
        disabled: list[str] = []
        dropped: list[str] = []
        kept: list[str] = []
        mentioned: set[str] = set()
        for key, record in records.items():
            if not key.startswith(BREAKER_PREFIX) or not isinstance(record, dict):
                continue
            name = key.removeprefix(BREAKER_PREFIX)
            breaker = self._breakers.get(name)
            if breaker is None:
                continue
            mentioned.add(name)
            words = self._apply(breaker, record, now)
            if words is None:
                continue
            outcome, text = words
            {"forced": forced, "disabled": disabled, "dropped": dropped}[outcome].append(text)
            if outcome == "dropped":
                self._mark(key, None)
        # The store then holds what is in force: a forced open as it is now (the fleet's,
        # at start), an isolation the restored state lacks as well.
        for name, breaker in self._breakers.items():
            record = breaker_record(breaker, None, now)
            if record is None or (name in mentioned and breaker.forcing is None):
                continue
            self._mark(BREAKER_PREFIX + name, record)
            if name not in mentioned and not at_start:
                kept.append(f"{name} {record['state'].replace('_', ' ')}")
        self._mark(SYSTEM_KEY, self._system_record())
        if not at_start:  # the switches in force (cooldowns, minimal mode) stay, and are kept
            for key, switch in self._switches.items():
                # One not in force here is left as stored: on PostgreSQL another replica's.
                if (record := switch.record()) is not None:
                    self._mark(key, record)
        result = Restored(
            tuple(forced), tuple(disabled), tuple(dropped), tuple(kept), system, switches
        )
        for line in result.lines():
            log.warning("%s", line)
        return result

    async def restored_lines(self) -> list[str]:
        """After a rollback of ``system_state``: put its isolations back, say what was done."""
        restored = await self.restore()
        await self.flush()
        return restored.lines() or ["no breaker isolations to restore"]

    def _apply(
        self, breaker: CircuitBreaker, record: dict[str, Any], now: float
    ) -> tuple[str, str] | None:
        state, name = record.get("state"), breaker.name
        if state == BreakerState.DISABLED.value:
            if breaker.state is BreakerState.DISABLED:
                return None
            breaker.disable(source=record.get("source"))
            return "disabled", name
        if state != BreakerState.FORCED_OPEN.value:
            return None
        until = record.get("until")
        if until is not None and until <= now:
            return "dropped", f"{name} forced open until {iso_utc(until)}"
        if breaker.forcing is not None:
            return None  # forced open already (by the fleet, or since): that one stays
        reason, source = str(record.get("reason") or "isolated"), str(record.get("source"))
        incident = record.get("incident")
        incident = incident if isinstance(incident, str) else None
        since = record.get("since")  # opened then, not at this start
        since = float(since) if isinstance(since, int | float) else None
        breaker.force_open(
            reason, source, until=until, incident=incident, carried=True, since=since
        )
        words = "until released" if until is None else f"until {iso_utc(until)}"
        return "forced", f"{name} {words} ({source}: {reason})"

    def _resume_system(self, record: Any) -> str | None:
        if not isinstance(record, dict):
            return None
        with contextlib.suppress(ValueError, KeyError, TypeError):
            state = SystemState(record["state"])
            self._machine.resume(state, str(record["reason"]), float(record["since"]))
            if state is SystemState.NORMAL:  # nothing to tell (a warning on every start)
                return None
            return f"{state.value} since {iso_utc(float(record['since']))}"
        return None

    def _resume_switches(self, records: dict[str, Any]) -> tuple[str, ...]:
        resumed = []
        for key, switch in self._switches.items():
            record = records.get(key)
            if isinstance(record, dict):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    if words := switch.resume(record):
                        resumed.append(words)
        return tuple(resumed)
