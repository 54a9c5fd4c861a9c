"""The bulkhead of one agent: at most ``max_concurrent_calls`` of its calls at once.

A call beyond the limit waits, first come first served, up to ``max_wait_s`` for a slot; one
that gets none is turned away, and its guard answers with a fallback. A slow agent then holds
only its own slots, not every worker of the service. ``ers_agent_calls_waiting`` is the
length of each agent's line.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Protocol

from opentelemetry.metrics import CallbackOptions, Meter, Observation


class Bulkhead:
    def __init__(self, name: str, max_concurrent_calls: int, max_wait_s: float = 0.0) -> None:
        if max_concurrent_calls < 1:
            raise ValueError("max_concurrent_calls must be at least 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")
        self.name = name
        self.max_concurrent_calls = max_concurrent_calls
        self.max_wait_s = max_wait_s
        self._free = max_concurrent_calls
        # A slot that frees up goes straight to the oldest waiter, so none is overtaken.
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def in_flight(self) -> int:
        return self.max_concurrent_calls - self._free

    async def enter(self) -> bool:
        """Take a slot, waiting up to ``max_wait_s``; False when none came in time."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        if self.max_wait_s <= 0:
            return False
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            async with asyncio.timeout(self.max_wait_s):
                await slot
        except BaseException as exc:
            if slot.done() and not slot.cancelled():
                # The slot came as the wait ended: hand it on rather than lose it.
                self.leave()
            elif slot in self._waiters:
                self._waiters.remove(slot)
            if isinstance(exc, TimeoutError):
                return False
            raise
        return True

    def leave(self) -> None:
        """Give a slot back: to the oldest waiter, else to the free ones."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    def describe_full(self) -> str:
        return (
            f"agent '{self.name}' has {self.max_concurrent_calls} call(s) in flight, its "
            f"limit, and no slot freed within {self.max_wait_s:g} s"
        )


class _Bulkheaded(Protocol):
    bulkhead: Bulkhead | None


def register_bulkhead_metrics(meter: Meter, guards: Mapping[str, _Bulkheaded]) -> None:
    """``ers_agent_calls_waiting{agent}``: calls waiting for a slot of each agent's bulkhead
    (0 for an agent without one), read from ``guards`` at every collection."""

    def waiting(options: CallbackOptions) -> Iterable[Observation]:
        for name, guard in list(guards.items()):
            bulkhead = guard.bulkhead
            yield Observation(0 if bulkhead is None else bulkhead.waiting, {"agent": name})

    meter.create_observable_gauge(
        "ers_agent_calls_waiting",
        [waiting],
        unit="1",
        description="Agent calls waiting for a slot of the agent's bulkhead",
    )
