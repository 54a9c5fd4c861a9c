"""Minimal response mode: after a critical failure, chat answers with short guidance and
does no agent work (no routing, no plans, no store reads) until the mode expires.

The responder's ``minimal_response_mode`` action turns it on for a while; the chat service
talks to the team through ``MinimalModeGate``, which answers on its own while the mode holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from service.agents.base import AgentReply, AgentRequest
from service.resilience.guard import GuardedAgent

MINIMAL_ANSWER = (
    "ERS is answering in minimal mode while it recovers from a critical failure: meal plans, "
    "workouts and budget reports are paused. Please try again in a few minutes."
)


class MinimalMode:
    """On until a moment; kept by the state keeper (``KeptSwitch``), so a restart in the
    middle resumes it until the same moment."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._until = 0.0
        self.reason = ""
        self.incident: str | None = None  # the incident that turned it on, named in replies
        self._changed_at = -float("inf")
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def enter(self, seconds: float, reason: str, incident: str | None = None) -> None:
        self._until = max(self._until, self._clock() + seconds)
        self.reason = reason
        self.incident = incident
        self._changed()

    def leave(self, kept: dict[str, object] | None = None) -> bool:
        """End the mode now (an operator says the system is back); whether it was on, here or
        in ``kept``, the record the fleet shares on PostgreSQL (another replica's responder
        may have turned it on, not followed here yet). Only an end of a mode that was on is
        a change to store: a replica where it was off has nothing to delete."""
        was_on = self.active or (kept is not None and self._left(kept) > 0)
        self._until = 0.0
        if was_on:
            self._changed()
        return was_on

    def leave_for(self, incident: str) -> bool:
        """End the mode if ``incident`` is the one that turned it on (now resolved); whether
        it ended."""
        return self.incident == incident and self.leave()

    def record(self) -> dict[str, object] | None:
        if not self.active:
            return None
        return {
            "until": self._wall_clock() + self.remaining_s(),
            "reason": self.reason,
            "incident": self.incident,
        }

    def resume(self, record: dict[str, object]) -> str | None:
        """Put back a kept record whose moment has not passed; what was done, in words. The
        record is the store's already: nothing to store again."""
        left = self._left(record)
        if left <= 0:
            return None
        self._until = self._clock() + left
        self.reason = str(record["reason"])
        incident = record.get("incident")
        self.incident = None if incident is None else str(incident)
        return f"minimal response mode for {left:.0f} s more ({self.reason[:200]})"

    def follow(self, record: dict[str, object] | None, settle_s: float) -> str | None:
        """Match the kept record, which on PostgreSQL every replica shares: another replica
        turned the mode on, or ended it. What changed, in words; None when nothing did. A
        change made here within ``settle_s`` may not be stored yet: it stands. Following
        stores nothing: a delete or a put back here could undo a record another replica
        wrote after this one read, and would hold this replica's next reads off."""
        if self._clock() - self._changed_at < settle_s:
            return None
        if record is None:
            if not self.active:
                return None
            self._until = 0.0  # ended on another replica, which deleted the record
            return "ended"
        left = self._left(record)
        if left <= 0 or (self.active and abs(self.remaining_s() - left) < 1.0):
            return None
        return self.resume(record)

    def _left(self, record: dict[str, object]) -> float:
        return float(record["until"]) - self._wall_clock()  # type: ignore[arg-type]

    def _changed(self) -> None:
        self._changed_at = self._clock()
        for listener in self._listeners:
            listener()

    @property
    def active(self) -> bool:
        return self._clock() < self._until

    def remaining_s(self) -> float:
        return max(0.0, self._until - self._clock())

    def as_dict(self) -> dict[str, object]:
        active = self.active
        return {
            "active": active,
            "remainingSeconds": round(self.remaining_s(), 1) if active else 0,
            "reason": self.reason if active else None,
            "incident": self.incident if active else None,
        }


class MinimalModeGate:
    """The router as the chat service sees it: passes every request on, except in minimal
    mode, when it answers with short guidance and calls no agent."""

    def __init__(self, router: GuardedAgent, mode: MinimalMode) -> None:
        self.router = router
        self.mode = mode
        self.name = router.name

    async def handle(self, request: AgentRequest) -> AgentReply:
        if not self.mode.active:
            return await self.router.handle(request)
        return AgentReply(
            content=MINIMAL_ANSWER,
            agent=self.router.name,
            confidence=0.1,
            success=False,
            degraded=True,
            fallback="minimal",
            incident=self.mode.incident,
            data={"cause": f"minimal response mode: {self.mode.reason[:200]}"},
        )
