"""Fallback answers for an agent that cannot answer: its last good answer, else guidance."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from service.agents.base import AgentReply, AgentRequest


@dataclass(frozen=True, slots=True)
class Fallback:
    content: str
    kind: str  # "cached" or "generic"


class LastGoodAnswers:
    """The newest good answer per (user, agent, intent), least recently used evicted first."""

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._answers: OrderedDict[tuple[str, str, str], str] = OrderedDict()

    def remember(self, request: AgentRequest, reply: AgentReply) -> None:
        key = (request.user_id, reply.agent, request.intent or reply.agent)
        self._answers[key] = reply.content
        self._answers.move_to_end(key)
        if len(self._answers) > self.capacity:
            self._answers.popitem(last=False)

    def recall(self, request: AgentRequest, agent: str) -> str | None:
        key = (request.user_id, agent, request.intent or agent)
        return self._answers.get(key)

    def trim(self, keep: int) -> int:
        """Drop all but the newest ``keep`` answers; returns how many were dropped."""
        dropped = 0
        while len(self._answers) > keep:
            self._answers.popitem(last=False)
            dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self._answers)


class FallbackPolicy:
    def __init__(
        self,
        agent: str,
        guidance: str,
        cache: LastGoodAnswers | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.agent = agent
        self.guidance = guidance
        self.cache = cache
        self.clock = clock
        self._cached_until = 0.0

    def serve_cached_for(self, seconds: float) -> None:
        """For ``seconds``, a request with a cached answer gets it without calling the agent."""
        self._cached_until = max(self._cached_until, self.clock() + seconds)

    def stop_serving_cached(self) -> bool:
        """End ``serve_cached_for`` now (the agent is back); whether it was on."""
        was_on = self._cached_until > self.clock()
        self._cached_until = 0.0
        return was_on

    def serves_cached(self, request: AgentRequest) -> bool:
        """Whether this request is answered from the cache instead of the agent now."""
        if self._cached_until <= self.clock() or self.cache is None:
            return False
        return self.cache.recall(request, self.agent) is not None

    def answer(self, request: AgentRequest) -> Fallback:
        cached = self.cache.recall(request, self.agent) if self.cache is not None else None
        if cached is not None:
            return Fallback(
                f"The {self.agent} agent is recovering; here is your last answer from it:\n"
                f"{cached}",
                "cached",
            )
        return Fallback(self.guidance, "generic")
