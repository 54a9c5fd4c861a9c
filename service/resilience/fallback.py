"""Fallback answers for an agent that cannot answer: the other agents its ``fallbacks:``
name, in order; then its last good answer; else its guidance."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Protocol

from opentelemetry import trace

from service.agents.base import AgentReply, AgentRequest


@dataclass(frozen=True, slots=True)
class Fallback:
    content: str
    kind: str  # "cached" or "generic"

    def as_reply(self, agent: str, cause: str, breaker_state: str, outcome: str) -> AgentReply:
        """The degraded reply ``agent`` gives with this answer, after a call that ended as
        ``outcome`` (failure, timeout, refused, rejected) because of ``cause``."""
        return AgentReply(
            content=self.content,
            agent=agent,
            confidence=0.3 if self.kind == "cached" else 0.1,
            success=False,
            degraded=True,
            fallback=self.kind,
            data={"cause": cause, "breaker": breaker_state, "outcome": outcome},
        )


class LastGoodAnswers:
    """The newest good answer per (user, agent, intent), least recently used evicted first;
    at most ``capacity`` answers and ``max_chars`` characters in all: a remote agent may
    answer with up to a MiB, and 10,000 of those would be 10 GB."""

    def __init__(self, capacity: int = 10_000, max_chars: int = 32 * 1024 * 1024) -> None:
        if capacity < 1 or max_chars < 1:
            raise ValueError("capacity and max_chars must be at least 1")
        self.capacity = capacity
        self.max_chars = max_chars
        self._answers: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._chars = 0

    def remember(self, request: AgentRequest, reply: AgentReply) -> None:
        key = (request.user_id, reply.agent, request.intent or reply.agent)
        content = reply.content
        previous = self._answers.pop(key, None)
        if previous is not None:
            self._chars -= len(previous)
        if len(content) > self.max_chars:  # it would push out everything else, and not fit
            return
        self._answers[key] = content
        self._chars += len(content)
        while len(self._answers) > self.capacity or self._chars > self.max_chars:
            self._chars -= len(self._answers.popitem(last=False)[1])

    def recall(self, request: AgentRequest, agent: str) -> str | None:
        key = (request.user_id, agent, request.intent or agent)
        return self._answers.get(key)

    def trim(self, keep: int) -> int:
        """Drop all but the newest ``keep`` answers; returns how many were dropped."""
        dropped = 0
        while len(self._answers) > keep:
            self._chars -= len(self._answers.popitem(last=False)[1])
            dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self._answers)

    def count(self, agent: str) -> int:
        """How many of the answers are ``agent``'s."""
        return sum(1 for _, by, _ in self._answers if by == agent)


ROLLED_BACK_KEY = "answers_rolled_back"


class AnswersRolledBack:
    """A token of the newest rollback of a store the cached answers were read from
    (conversations, budgets, profiles), kept in the system_state store under its own key: a
    kept switch each replica of a fleet follows. The replica that ran the rollback drops its
    cached answers at once, the others when they see the token change; before, they went on
    serving, as an agent's fallback, answers that told of the state the rollback put aside.
    A token, not a time: replicas' clocks need not agree."""

    def __init__(self, answers: LastGoodAnswers) -> None:
        self._answers = answers
        self._token: str | None = None
        self._listeners: list[Callable[[], None]] = []

    async def dropped(self) -> list[str]:
        """After a rollback here: mark it for the fleet and drop this replica's answers."""
        self._token = uuid.uuid4().hex
        for listener in self._listeners:
            listener()
        dropped = self._answers.trim(keep=0)
        return [f"cached answers given before the rollback dropped: {dropped}"] * (dropped > 0)

    def record(self) -> dict[str, object] | None:
        return {"token": self._token} if self._token else None

    def resume(self, record: dict[str, object]) -> str | None:
        self._token = str(record["token"]) if record.get("token") else None
        return None  # nothing cached yet at a start: nothing to say

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def follow(self, record: dict[str, object] | None, settle_s: float) -> str | None:
        """A rollback another replica ran since the last one seen here: drop the answers.
        (A record gone, or an older one a system_state rollback put back, is said again by
        the replica that keeps the newest: at worst the answers are dropped twice.)"""
        if record is None or not record.get("token") or str(record["token"]) == self._token:
            return None
        self._token = str(record["token"])
        if dropped := self._answers.trim(0):
            return f"cached answers given before a rollback there dropped: {dropped}"
        return None


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

    def serving_cached(self) -> bool:
        """Whether a ``serve_cached_for`` is in force now."""
        return self._cached_until > self.clock()

    def stop_serving_cached(self) -> bool:
        """End ``serve_cached_for`` now (the agent is back); whether it was on."""
        was_on = self.serving_cached()
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
                # Said first: an old report is no answer to "spent $10 on food", which the
                # agent, not called, did not record (profile facts the router saves are its).
                f"The {self.agent} agent is recovering, so what you asked of it was not done "
                f"(send it again later); here is your last answer from it:\n{cached}",
                "cached",
            )
        return Fallback(self.guidance, "generic")


class Alternate(Protocol):
    """An agent of the team that may answer for another: a guarded agent."""

    name: str

    def available_now(self) -> bool: ...

    async def handle(self, request: AgentRequest) -> AgentReply: ...


@dataclass(frozen=True, slots=True)
class ChainAnswer:
    reply: AgentReply
    via: str
    tried: tuple[str, ...]
    skipped: tuple[str, ...]

    def as_reply(self, agent: str, cause: str, breaker_state: str, outcome: str) -> AgentReply:
        """The reply ``agent`` gives with the alternate's answer: degraded, saying which
        agent answered, which were tried and which skipped."""
        reply = self.reply
        return replace(
            reply,
            agent=agent,
            degraded=True,
            fallback="agent",
            data={**reply.data, "cause": cause, "breaker": breaker_state, "outcome": outcome},
            recovery={
                **(reply.recovery or {}),
                "fallback": "agent",
                "via": self.via,
                "chain": list(self.tried),
                "skipped": list(self.skipped),
            },
        )


@dataclass(frozen=True)
class ChainMiss:
    """No agent of the chain answered: which were tried and which skipped, for the reply."""

    tried: tuple[str, ...]
    skipped: tuple[str, ...]

    def noted_on(self, reply: AgentReply) -> AgentReply:
        chain = {"chain": list(self.tried), "skipped": list(self.skipped)}
        return replace(reply, recovery={**(reply.recovery or {}), **chain})


# Set while an alternate answers for another agent: a failing alternate does not try its
# own fallback agents, so chains never loop (A -> B -> A) nor fan out.
_ANSWERING_FOR: ContextVar[str | None] = ContextVar("ers_answering_for", default=None)


class FallbackChain:
    """The other agents that answer, in order, for one that cannot (``fallbacks:``).

    Each is asked through its own guard (its breaker, timeout and retries), in a span
    ``fallback.<name>`` under the failing call's span; one whose breaker would turn the
    call away now is skipped, and one that can only answer degraded does not count."""

    def __init__(
        self,
        agent: str,
        names: Sequence[str],
        team: Mapping[str, Alternate],
        tracer: trace.Tracer,
    ) -> None:
        self.agent = agent
        self.names = tuple(names)
        self._team = team
        self._tracer = tracer

    async def answer(self, request: AgentRequest) -> ChainAnswer | ChainMiss | None:
        """The first alternate's answer; else which were tried and skipped; None when there
        is no chain to try (none set, or this is itself an alternate answering)."""
        if not self.names or _ANSWERING_FOR.get() is not None:
            return None
        tried: list[str] = []
        skipped: list[str] = []
        for name in self.names:
            alternate = self._team.get(name)
            if alternate is None or not alternate.available_now():
                skipped.append(name)
                continue
            tried.append(name)
            reply = await self._ask(alternate, request)
            if reply is not None:
                return ChainAnswer(reply, name, tuple(tried), tuple(skipped))
        return ChainMiss(tuple(tried), tuple(skipped))

    async def _ask(self, alternate: Alternate, request: AgentRequest) -> AgentReply | None:
        with self._tracer.start_as_current_span(
            f"fallback.{alternate.name}",
            attributes={"ers.agent": self.agent, "ers.fallback.via": alternate.name},
        ) as span:
            token = _ANSWERING_FOR.set(self.agent)
            try:
                reply = await alternate.handle(request)
            except Exception as exc:
                # Its own span holds the error; here it only means "did not answer".
                span.set_attribute("ers.fallback.answered", False)
                span.set_attribute("ers.fallback.cause", type(exc).__name__)
                return None
            finally:
                _ANSWERING_FOR.reset(token)
            answered = not reply.degraded
            span.set_attribute("ers.fallback.answered", answered)
            return reply if answered else None
