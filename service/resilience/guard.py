"""The guard around every agent call (the seed's ``wrapAgentWithErrorHandling``).

One guarded call: open the ``agent.<name>`` span, ask the breaker, run the agent under a
timeout, retry recoverable errors with exponential backoff and jitter inside a total time
budget, record the outcome on the breaker, the span and the metrics, and when the breaker
rejects the call or the call fails, answer with the fallback (``emergency: true``).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import lru_cache

from opentelemetry import trace
from opentelemetry.context import attach as attach_context
from opentelemetry.context import detach as detach_context
from opentelemetry.trace import Status, StatusCode, set_span_in_context

from service.agents.base import Agent, AgentReply, AgentRequest, checked_reply
from service.agents.failure_kinds import FAILURE_KIND_ATTRIBUTE, FailureKind, RateLimited
from service.errors import StoreUnavailable, UserInputError
from service.resilience.breaker import DISABLED, CallNotPermitted, CircuitBreaker, ProbeOutcome
from service.resilience.breaker_events import report_trip
from service.resilience.breaker_permit import describe_error
from service.resilience.bulkhead import Bulkhead
from service.resilience.call_stats import CallStats
from service.resilience.cooldown import Cooldown
from service.resilience.deadlines import DeadlineWatchdog
from service.resilience.fallback import ChainAnswer, FallbackChain, FallbackPolicy
from service.resilience.faults import FaultInjector
from service.resilience.guard_config import GuardConfig
from service.resilience.instruments import AgentInstruments
from telemetry.exception_events import EXCEPTION_BASES_ATTRIBUTE as BASES_ATTRIBUTE
from telemetry.exception_events import described, exception_bases, record_exception

SHARED_DEADLINES = DeadlineWatchdog()


@lru_cache(maxsize=65_536)
def hash_user_id(user_id: str) -> str:
    """User ids never go into telemetry as they are."""
    return hashlib.sha256(user_id.encode()).hexdigest()[:16]


class GuardedAgent:
    """An agent behind its breaker, timeout, retries and fallback; itself an ``Agent``."""

    def __init__(
        self,
        agent: Agent,
        breaker: CircuitBreaker,
        fallback: FallbackPolicy,
        tracer: trace.Tracer,
        instruments: AgentInstruments | None,
        config: GuardConfig | None = None,
        faults: FaultInjector | None = None,
        factory: Callable[[], Agent] | None = None,
        deadlines: DeadlineWatchdog | None = None,
        stats: CallStats | None = None,
        bulkhead: Bulkhead | None = None,
        chain: FallbackChain | None = None,
    ) -> None:
        self.name = agent.name
        self.agent = agent
        self.breaker = breaker
        self.fallback = fallback
        self.config = config or GuardConfig()
        self._tracer = tracer
        self._instruments = instruments
        self._faults = faults
        # What a restart builds a new instance with (Team.restart); None: not restarted.
        self.factory = factory
        self._span_name = f"agent.{agent.name}"
        self._outcome_labels: dict[str, dict[str, str]] = {}
        self._deadlines = deadlines or SHARED_DEADLINES
        self._first_limit = self.config.limit(self.config.total_budget_s)
        self._cache = fallback.cache
        self._stats = stats
        self.bulkhead = bulkhead
        self.chain = chain
        # Calls fall back without reaching the agent while it runs: the agent asked (a rate
        # limit's Retry-After) for longer than a call could wait. Kept across restarts.
        self.cooldown = Cooldown(agent.name)

    def cooldown_remaining(self) -> float:
        """Seconds left of the agent's cooldown; 0 when it takes calls (or is disabled)."""
        return 0.0 if self.breaker.state is DISABLED else self.cooldown.remaining()

    def end_cooldown(self) -> bool:
        """End the cooldown now (an operator's reset); False when there was none."""
        return self.cooldown.end()

    async def probe(self) -> ProbeOutcome:
        """A synthetic call now, bypassing the breaker: passed, or the error it met."""
        try:
            await self._attempt(
                AgentRequest(message="health probe", user_id="ers-probe", synthetic=True),
                self.config.timeout_s,
            )
        except UserInputError:
            pass  # the agent answered: it is up
        except Exception as exc:
            return ProbeOutcome(describe_error(exc))
        return ProbeOutcome()

    # --- bulkhead and fallback chain ------------------------------------------------------

    def available_now(self) -> bool:
        """Whether a call now would reach the agent: it is not cooling down (a rate limit's
        Retry-After) and its breaker would admit it. Asks without taking a permit, so a
        fallback chain can skip an agent that would only fall back itself."""
        if self.cooldown_remaining() > 0:
            return False
        return self.breaker.admits_calls_now()

    async def handle(self, request: AgentRequest) -> AgentReply:
        bulkhead = self.bulkhead
        if bulkhead is None or request.synthetic:
            return await self._handle(request)
        started = time.perf_counter()
        if not await bulkhead.enter():
            return await self._turned_away(request, bulkhead, started)
        try:
            return await self._handle(request)
        finally:
            bulkhead.leave()

    async def _turned_away(
        self, request: AgentRequest, bulkhead: Bulkhead, started: float
    ) -> AgentReply:
        """No bulkhead slot came in time: a fallback answers; the breaker counts nothing."""
        with self._tracer.start_as_current_span(
            self._span_name,
            attributes={
                "ers.agent": self.name,
                "ers.user_id": hash_user_id(request.user_id),
                "ers.synthetic": False,
                "ers.bulkhead.rejected": True,
            },
        ) as span:
            cause = bulkhead.describe_full()
            reply = await self._degrade(request, span, started, "rejected", cause)
            return replace(reply, data={**reply.data, "bulkhead": True})  # busy, not failing

    def _answered_by_alternate(
        self, answer: ChainAnswer, span: trace.Span, started: float, outcome: str, cause: str
    ) -> AgentReply:
        span.set_attribute("ers.degraded", True)
        span.set_attribute("ers.fallback", "agent")
        span.set_attribute("ers.fallback.via", answer.via)
        self._record(outcome, started)
        if self._instruments is not None:
            self._instruments.fallbacks.add(1, {"agent": self.name, "kind": "agent"})
        return answer.as_reply(self.name, cause, self.breaker.state.value, outcome)

    # --- one guarded call ------------------------------------------------------------------

    async def _handle(self, request: AgentRequest) -> AgentReply:
        started = time.perf_counter()
        # The span is made current by hand rather than with start_as_current_span: its
        # generator-based context managers cost several microseconds per call, and with
        # record_exception and set_status_on_exception off they do nothing more than this.
        span = self._tracer.start_span(
            self._span_name,
            attributes={
                "ers.agent": self.name,
                "ers.user_id": hash_user_id(request.user_id),
                "ers.synthetic": request.synthetic,
                "ers.degraded": False,
            },
            record_exception=False,
            set_status_on_exception=False,
        )
        token = attach_context(set_span_in_context(span))
        try:
            if request.synthetic:
                return await self._synthetic(request, span)
            if self.fallback.serves_cached(request):
                # The responder's serve_cached: the agent is spared; the call never reaches
                # it, so it counts as rejected, as behind an open breaker.
                span.set_attribute("ers.serve_cached", True)
                return await self._degrade(
                    request, span, started, "rejected", "serving cached answers", chain=False
                )
            if self.cooldown.until and self.cooldown_remaining() > 0:
                span.set_attribute("ers.cooldown", True)
                return await self._degrade(
                    request,
                    span,
                    started,
                    "rejected",
                    f"agent '{self.name}' asked to be left alone (rate limited); it is called "
                    f"again in {self.cooldown_remaining():.1f} s",
                )
            if (gate := self.breaker.trial_gate) is not None:
                await gate.ready()  # a fleet's trial lease, if a trial needs one: asked first
            try:
                permit = self.breaker.acquire()
            except CallNotPermitted as rejected:
                span.set_attribute("ers.breaker.rejected", True)
                return await self._degrade(request, span, started, "rejected", str(rejected))
            try:
                # The first attempt runs inline: it is the only one on the healthy path.
                reply = await self._deadlines.run(self._agent_call(request), *self._first_limit)
                checked_reply(self.name, reply)
            except (UserInputError, StoreUnavailable) as passed:  # no failure of the agent
                permit.release()
                self._record(passed.call_outcome, started)
                raise
            except Exception as first_error:
                permit.record_failure(first_error, time.perf_counter() - started)
                try:
                    reply = await self._retry(request, span, started, first_error)
                except (UserInputError, StoreUnavailable) as passed:
                    self._record(passed.call_outcome, started)
                    raise
                except Exception as exc:
                    return await self._fail(request, span, started, exc)
            else:
                if permit.record_success(time.perf_counter() - started):
                    self._report_trip()
            self._record("success", started)
            # The router passes on other agents' replies; those agents remember their own.
            # A reply that records something ("Recorded $25") answers no later request.
            reusable = not reply.writes if reply.reusable is None else reply.reusable
            if (
                self._cache is not None
                and reusable
                and not (reply.degraded or reply.agent != self.name)
            ):
                self._cache.remember(request, reply)
            return reply
        finally:
            detach_context(token)
            span.end()

    def _report_trip(self) -> None:
        report_trip(self._tracer, f"{self._span_name}.breaker", self.breaker)

    async def _synthetic(self, request: AgentRequest, span: trace.Span) -> AgentReply:
        """A canary call: bypasses the breaker and the call statistics, counted apart."""
        try:
            reply = await self._attempt(request, self.config.timeout_s)
        except Exception as exc:
            self._mark_failed(span, exc)
            self._count_synthetic("synthetic_failure")
            raise
        self._count_synthetic("synthetic_success")
        return reply

    def _count_synthetic(self, outcome: str) -> None:
        if self._instruments is not None:
            self._instruments.calls.add(1, {"agent": self.name, "outcome": outcome})

    async def _fail(
        self, request: AgentRequest, span: trace.Span, started: float, exc: Exception
    ) -> AgentReply:
        outcome = "timeout" if isinstance(exc, TimeoutError) else "failure"
        outcome = getattr(exc, "call_outcome", outcome)  # "refused": a remote agent's 429, 400
        return await self._degrade(request, span, started, outcome, self._mark_failed(span, exc))

    def _mark_failed(self, span: trace.Span, exc: Exception) -> str:
        """``span`` failed with ``exc``, and its kind for the rules (a remote agent's call
        the guard's deadline cut is a ``timeout`` too); returns the status's words."""
        span.set_status(Status(StatusCode.ERROR, cause := described(exc)))
        span.set_attribute("error.type", type(exc).__qualname__)
        span.set_attribute(BASES_ATTRIBUTE, exception_bases(exc))
        if isinstance(exc, FailureKind):
            span.set_attributes(exc.span_attributes())
        elif isinstance(exc, TimeoutError) and (kind := getattr(self.agent, "deadline_kind", "")):
            span.set_attribute(FAILURE_KIND_ATTRIBUTE, kind)
        return cause

    async def _retry(
        self, request: AgentRequest, span: trace.Span, started: float, error: Exception
    ) -> AgentReply:
        """Retry a failed first attempt while the error is recoverable, attempts and the
        time budget remain, and the breaker still admits calls; raise the last error.

        A ``FailureKind`` says itself whether it is retryable; a rate limit's Retry-After
        replaces the backoff when the budget can wait that long, and puts the agent in a
        cooldown for that long when it cannot."""
        config = self.config
        attempt = 1
        while True:
            delay = config.backoff(attempt)
            elapsed = time.perf_counter() - started
            if isinstance(error, FailureKind):
                record_exception(
                    span, error, {"ers.attempt": attempt, FAILURE_KIND_ATTRIBUTE: error.kind}
                )
                retryable = error.retryable
                if error.retry_after_s is not None:
                    delay = error.retry_after_s
            else:
                record_exception(span, error, {"ers.attempt": attempt})
                retryable = isinstance(error, config.retry_on)
            if (
                attempt >= config.max_attempts
                or not retryable
                or elapsed + delay >= config.total_budget_s
            ):
                if isinstance(error, RateLimited) and error.retry_after_s is not None:
                    self.cooldown.start(error.retry_after_s)
                    span.set_attribute("ers.cooldown_s", error.retry_after_s)
                try:
                    raise error
                finally:
                    # The traceback holds this frame: a local still naming the error would
                    # make a cycle, and every failed call's frames, span and request would
                    # wait for the cyclic collector (a pause of milliseconds on the loop
                    # under an error storm) instead of going with their last reference.
                    del error
            attempt += 1
            span.add_event("retry", {"ers.attempt": attempt, "ers.backoff_s": delay})
            await asyncio.sleep(delay)
            try:
                permit = self.breaker.acquire()
            except CallNotPermitted:
                # The breaker opened on this call's own failures: the call failed, it was
                # not turned away.
                try:
                    raise error from None
                finally:
                    del error
            call_started = time.perf_counter()
            remaining = config.total_budget_s - (call_started - started)
            try:
                reply = await self._attempt(request, *config.limit(remaining))
            except (UserInputError, StoreUnavailable):
                permit.release()
                raise
            except Exception as exc:
                permit.record_failure(exc, time.perf_counter() - call_started)
                error = exc
                continue
            if permit.record_success(time.perf_counter() - call_started):
                self._report_trip()
            span.set_attribute("ers.attempts", attempt)
            return reply

    async def _attempt(
        self, request: AgentRequest, timeout_s: float, budget_s: float | None = None
    ) -> AgentReply:
        reply = await self._deadlines.run(self._agent_call(request), timeout_s, budget_s)
        return checked_reply(self.name, reply)

    def _agent_call(self, request: AgentRequest) -> Awaitable[AgentReply]:
        faults = self._faults
        if faults is not None and faults.is_faulty(self.name):
            return self._faulty_call(faults, request)
        return self.agent.handle(request)

    async def _faulty_call(self, faults: FaultInjector, request: AgentRequest) -> AgentReply:
        await faults.before_call(self.name)
        return await self.agent.handle(request)

    async def _degrade(
        self,
        request: AgentRequest,
        span: trace.Span,
        started: float,
        outcome: str,
        cause: str,
        *,
        chain: bool = True,
    ) -> AgentReply:
        # The responder's serve_cached chose the cached answer: no other agent is asked.
        answer = await self.chain.answer(request) if chain and self.chain is not None else None
        if isinstance(answer, ChainAnswer):
            return self._answered_by_alternate(answer, span, started, outcome, cause)
        fallback = self.fallback.answer(request)
        span.set_attribute("ers.degraded", True)
        span.set_attribute("ers.fallback", fallback.kind)
        self._record(outcome, started)
        if self._instruments is not None:
            self._instruments.fallbacks.add(1, {"agent": self.name, "kind": fallback.kind})
        reply = fallback.as_reply(self.name, cause, self.breaker.state.value, outcome)
        return reply if answer is None else answer.noted_on(reply)  # the agents tried

    def _record(self, outcome: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        if self._stats is not None:
            self._stats.record(self.name, outcome, elapsed)
        if self._instruments is None:
            return
        labels = self._outcome_labels.get(outcome)
        if labels is None:
            labels = self._outcome_labels[outcome] = {"agent": self.name, "outcome": outcome}
        self._instruments.calls.add(1, labels)
        self._instruments.duration.record(elapsed, self.name)
