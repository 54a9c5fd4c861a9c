"""Fault injection: make an agent's next calls really fail inside its guard.

Only built outside production. A fault raises a real exception (or delays the call) at the
point where the agent would run, so the error span, the breaker, the incident and the
fallback all come from the same path a genuine failure takes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from service.errors import AgentFailure, DependencyError


class SimulatedDatabaseError(DependencyError):
    """A database the agent depends on failed (injected)."""


class SimulatedNetworkError(DependencyError, ConnectionError):
    """A network dependency of the agent failed (injected)."""


class SimulatedAgentCrash(AgentFailure):
    """The agent itself failed while processing (injected)."""


class SimulatedCoreFailure(RuntimeError):
    """An uncaught error in the core of the system (injected)."""


class SimulatedMemoryPressure(MemoryError):
    """The process ran short of memory (injected)."""


ERROR_TYPES: dict[str, type[BaseException]] = {
    "database": SimulatedDatabaseError,
    "network": SimulatedNetworkError,
    "agent": SimulatedAgentCrash,
    "system": SimulatedCoreFailure,
    "resource": SimulatedMemoryPressure,
    "timeout": TimeoutError,
}

DEFAULT_MESSAGES = {
    "database": "Database connection timeout",
    "network": "Connection refused by upstream service",
    "agent": "Agent processing failure",
    "system": "Uncaught exception in core system",
    "resource": "Memory usage exceeded 90%",
    "timeout": "Agent call timed out",
}


@dataclass
class Fault:
    error_type: str
    message: str
    remaining: int | None  # None: until cleared
    delay_s: float = 0.0
    expires_at: float | None = None
    # Share of calls that fail (1.0: every call); the others run normally.
    rate: float = 1.0

    def exception(self) -> BaseException:
        return ERROR_TYPES[self.error_type](self.message)


class FaultInjector:
    def __init__(self, random_source: Callable[[], float] = random.random) -> None:
        self._faults: dict[str, Fault] = {}
        self._random = random_source

    def inject(
        self,
        agent: str,
        error_type: str,
        message: str | None = None,
        count: int | None = None,
        delay_s: float = 0.0,
        duration_s: float | None = None,
        rate: float = 1.0,
    ) -> Fault:
        if error_type not in ERROR_TYPES:
            known = ", ".join(ERROR_TYPES)
            raise ValueError(f"unknown errorType '{error_type}'; use one of: {known}")
        fault = Fault(
            error_type=error_type,
            message=message or DEFAULT_MESSAGES[error_type],
            remaining=count,
            delay_s=delay_s,
            expires_at=time.monotonic() + duration_s if duration_s else None,
            rate=rate,
        )
        self._faults[agent] = fault
        return fault

    def clear(self, agent: str | None = None) -> None:
        if agent is None:
            self._faults.clear()
        else:
            self._faults.pop(agent, None)

    def active(self) -> dict[str, Fault]:
        return dict(self._faults)

    def is_faulty(self, agent: str) -> bool:
        return agent in self._faults

    async def before_call(self, agent: str) -> None:
        """Raise or delay as the agent's fault says; nothing when there is none."""
        fault = self._faults.get(agent)
        if fault is None:
            return
        if fault.expires_at is not None and time.monotonic() >= fault.expires_at:
            self._faults.pop(agent, None)
            return
        if fault.rate < 1.0 and self._random() >= fault.rate:
            return
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.pop(agent, None)
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.error_type != "timeout" or not fault.delay_s:
            raise fault.exception()
