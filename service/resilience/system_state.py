"""The system state: normal → degraded → emergency → recovery → normal.

- emergency: an active critical incident, or most agents isolated or cooling down;
- degraded: any breaker open, forced or half-open, an agent cooling down after a rate limit (no call
  reaches it either), an active high incident, or a failing subsystem;
- recovery: the conditions above have cleared, until the system has been clean for
  ``recovery_clean_s``; then normal. Trouble during recovery goes back to degraded or
  emergency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

log = logging.getLogger("ers.state")


class SystemState(StrEnum):
    NORMAL = "normal"
    DEGRADED = "degraded"
    EMERGENCY = "emergency"
    RECOVERY = "recovery"


@dataclass(frozen=True)
class StateTransition:
    from_state: SystemState
    to_state: SystemState
    reason: str
    at: float
    # What called for the new state: the severity of the incidents behind it, else the
    # agents or subsystems behind it; neither when the conditions cleared.
    severity: str | None = None
    components: tuple[str, ...] = ()


class Conditions(NamedTuple):
    state: SystemState | None  # None when clean
    reason: str
    severity: str | None = None
    components: tuple[str, ...] = ()


@dataclass(frozen=True)
class StateInputs:
    breaker_states: Callable[[], dict[str, str]]
    active_incidents: Callable[[], dict[str, int]]
    failing_subsystems: Callable[[], list[str]]
    # The seconds left of each agent a rate limit's cooldown keeps every call from.
    cooling_down: Callable[[], dict[str, float]] = dict


ROUTER = "router"  # every chat passes it first


def all_but_out(agents: Iterable[str], isolated: Sequence[str], cooling: Sequence[str]) -> str:
    """Why the agents out (isolated, or ``cooling`` down after a rate limit: no call reaches
    either) leave chat all but out, or "": the router, which every chat passes first, or
    most of the agents it routes to. Before, the router counted as one agent among four: it
    out (every chat answered by a fallback) or two of three others was only "degraded"."""
    out = [*isolated, *cooling]
    if ROUTER in out:
        return f"the router is out, every chat answered by a fallback: {_named(isolated, cooling)}"
    routed = [agent for agent in agents if agent != ROUTER]
    if routed and len(out) * 2 > len(routed):
        return f"most agents isolated: {_named(isolated, cooling)}"
    return ""


def _named(isolated: Sequence[str], cooling: Sequence[str]) -> str:
    return ", ".join([*isolated, *(f"{name} (cooling down)" for name in cooling)])


class SystemStateMachine:
    def __init__(
        self,
        inputs: StateInputs,
        recovery_clean_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._inputs = inputs
        self.recovery_clean_s = recovery_clean_s
        self._clock = clock
        self.state = SystemState.NORMAL
        self.reason = "starting clean"
        self.since = clock()
        self._clean_since: float | None = None
        self._listeners: list[Callable[[StateTransition], None]] = []
        self.history: list[StateTransition] = []
        self._settling, self._put_off = 0, False

    def subscribe(self, listener: Callable[[StateTransition], None]) -> None:
        self._listeners.append(listener)

    def resume(self, state: SystemState, reason: str, since: float) -> None:
        """Carry on from a state kept before a restart (a recovery keeps watching from when
        it began); the next ``evaluate`` moves on from there as the conditions say."""
        self.state, self.reason, self.since = state, reason, since
        self._clean_since = since if state is SystemState.RECOVERY else None

    def conditions(self) -> Conditions:
        """The state the current conditions call for (None when clean), why, and what."""
        breakers = self._inputs.breaker_states()
        incidents = self._inputs.active_incidents()
        # A half-open breaker lets its trial calls through, every other call still gets the
        # fallback: the agent is out until a trial closes it. Before, each trial moved the
        # state to recovery and each failed one back to degraded, on every open duration.
        out = ("open", "forced_open", "half_open")
        isolated = sorted(n for n, s in breakers.items() if s in out)
        cooling = sorted(set(self._inputs.cooling_down()) - set(isolated))
        if incidents.get("critical"):
            why = f"{incidents['critical']} critical incident(s) active"
            return Conditions(SystemState.EMERGENCY, why, severity="critical")
        if why := all_but_out(breakers, isolated, cooling):
            return Conditions(SystemState.EMERGENCY, why, components=(*isolated, *cooling))
        if isolated:
            named = [f"{n} (half-open)" if breakers[n] == "half_open" else n for n in isolated]
            why = f"breaker open: {', '.join(named)}"
            return Conditions(SystemState.DEGRADED, why, components=tuple(isolated))
        if cooling:
            why = f"cooling down (rate limited): {', '.join(cooling)}"
            return Conditions(SystemState.DEGRADED, why, components=tuple(cooling))
        if incidents.get("high"):
            why = f"{incidents['high']} high-severity incident(s) active"
            return Conditions(SystemState.DEGRADED, why, severity="high")
        failing = self._inputs.failing_subsystems()
        if failing:
            why = f"failing subsystem: {', '.join(failing)}"
            return Conditions(SystemState.DEGRADED, why, components=tuple(failing))
        return Conditions(
            None,
            "no open breakers or cooldowns, no high or critical incidents, subsystems healthy",
        )

    @contextlib.contextmanager
    def settling(self) -> Iterator[None]:
        """Evaluations asked for within are put off to one at its end: a start putting back
        several isolations one by one passed through states that never were (emergency →
        degraded → emergency), each logged, and the state's "since" moved to the start."""
        self._settling += 1
        try:
            yield
        finally:
            self._settling -= 1
        if not self._settling and self._put_off:
            self._put_off = False
            self.evaluate()

    def evaluate(self) -> SystemState:
        if self._settling:
            self._put_off = True
            return self.state
        wanted = self.conditions()
        now = self._clock()
        if wanted.state is not None:
            self._clean_since = None
            self._move(wanted.state, wanted.reason, now, wanted)
        elif self.state in (SystemState.DEGRADED, SystemState.EMERGENCY):
            self._clean_since = now
            self._move(SystemState.RECOVERY, "conditions cleared; watching for relapse", now)
        elif self.state is SystemState.RECOVERY:
            if self._clean_since is None:
                self._clean_since = now
            if now - self._clean_since >= self.recovery_clean_s:
                self._move(SystemState.NORMAL, f"clean for {self.recovery_clean_s:g} s", now)
        return self.state

    def _move(
        self, to: SystemState, reason: str, now: float, cause: Conditions | None = None
    ) -> None:
        if to is self.state:
            self.reason = reason
            return
        severity, components = (cause.severity, cause.components) if cause else (None, ())
        transition = StateTransition(self.state, to, reason, now, severity, components)
        log.warning("system state %s -> %s: %s", self.state, to, reason)
        self.state, self.reason, self.since = to, reason, now
        self.history.append(transition)
        del self.history[:-100]
        for listener in self._listeners:
            try:
                listener(transition)
            except Exception:
                log.exception("system state listener failed")


async def tick_state(state: SystemStateMachine, interval_s: float = 1.0) -> None:
    """Recovery ends by the passing of time, so the state is also looked at every second."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            state.evaluate()
        except Exception:  # one bad reading must not stop the state from moving on
            log.exception("evaluating the system state failed")
