"""An agent's cooldown: how long calls leave it alone because it asked (a rate limit's
Retry-After longer than a call could wait). While it runs, calls fall back without reaching
the agent, with its breaker closed.

It is a switch the state keeper keeps (``service.resilience.state_keeper.KeptSwitch``): its
end is stored as a wall-clock moment, so a restart of ERS leaves the agent alone for the rest
of the time it asked for instead of calling it again at once. On PostgreSQL every replica
follows the kept record (``follow_the_fleet``): a cooldown the agent asked one replica for,
or an operator's reset that ended it, holds on all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class Cooldown:
    def __init__(
        self,
        agent: str,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.agent = agent
        # Monotonic moment until which calls leave the agent alone; 0.0 when none ran.
        self.until = 0.0
        self._clock = clock
        self._wall_clock = wall_clock
        self._listeners: list[Callable[[], None]] = []
        self._changed_at = float("-inf")  # monotonic: when it last started or ended here

    def remaining(self) -> float:
        """Seconds left; 0 when the agent takes calls."""
        return max(0.0, self.until - self._clock()) if self.until else 0.0

    def start(self, seconds: float) -> None:
        """Leave the agent alone for ``seconds`` from now (a longer cooldown running stays)."""
        self.until = max(self.until, self._clock() + seconds)
        self._changed()

    def end(self) -> bool:
        """End it now (an operator's reset); whether one was running."""
        running = self.remaining() > 0
        self.until = 0.0
        if running:
            self._changed()
        return running

    # --- KeptSwitch ------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def record(self) -> dict[str, Any] | None:
        left = self.remaining()
        return None if left <= 0 else {"agent": self.agent, "until": self._wall_clock() + left}

    def resume(self, record: dict[str, Any]) -> str | None:
        """Put back a kept cooldown whose end has not passed; what was done, in words."""
        left = float(record["until"]) - self._wall_clock()
        if left <= 0:
            return None
        self.until = max(self.until, self._clock() + left)
        return f"agent '{self.agent}' left alone for {left:.0f} s more (it asked: rate limited)"

    def follow(self, record: dict[str, Any] | None, settle_s: float) -> str | None:
        """Match the kept record, which on PostgreSQL every replica shares: the agent asked
        another replica to leave it alone, or an operator's reset there ended the cooldown.
        What changed, in words; None when nothing did. A change made here within
        ``settle_s`` may not be stored yet: it stands."""
        if self._clock() - self._changed_at < settle_s:
            return None
        left = 0.0 if record is None else float(record["until"]) - self._wall_clock()
        if left <= 0:
            if self.remaining() <= 0:
                return None
            self.until = 0.0
            return f"agent '{self.agent}' takes calls again: its cooldown ended"
        if left < self.remaining() + 1.0:
            # The same, or shorter (another replica's own, written before it followed this
            # one): a longer cooldown running stays, as start() keeps it; only an end ends it.
            return None
        self.until = self._clock() + left
        return f"agent '{self.agent}' left alone for {left:.0f} s (it asked: rate limited)"

    def _changed(self) -> None:
        self._changed_at = self._clock()
        for listener in self._listeners:
            listener()
