"""One chat turn: route the message through the guarded team, then commit the turn with the
writes its agents asked for (and the reply, when the request carried an Idempotency-Key) in
one unit: all of it or none, so a reply is only sent for what was stored."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from service.agents.base import AgentReply, AgentRequest
from service.chat.admission import ChatAdmission, ChatOverloaded
from service.chat.idempotency import (
    check_same_request,
    fingerprint,
    turn_key,
    turn_key_before,
)
from service.errors import UserInputError
from service.resilience.guard import GuardedAgent
from service.resilience.instruments import AgentInstruments
from service.stores.base import ChatTurn
from service.stores.unit_of_work import KeyTaken, KeyToRemember, RememberedReply, Unit, UnitOfWork

SCOPE = "POST /chat"


def seed_shape(reply: AgentReply, system_state: str, trace_id: str | None) -> dict[str, Any]:
    return {
        "response": reply.content,
        "success": reply.success,
        "confidence": round(reply.confidence, 3),
        "agent": reply.agent,
        "emergency": reply.degraded,
        "incident": reply.incident,
        "systemState": system_state,
        "recovery": reply.recovery,
        # The kept trace of a degraded reply: GET /api/emergency/traces/{traceId}.
        "traceId": trace_id,
    }


@dataclass(frozen=True, slots=True)
class ChatResult:
    body: dict[str, Any]
    # None for a replay: the turn was stored by the request that first used the key.
    turn_id: int | None
    degraded: bool
    replayed: bool = False
    status: int = 200

    def as_seed_shape(self) -> dict[str, Any]:
        return self.body

    @classmethod
    def replay(cls, remembered: RememberedReply, replayed: bool = True) -> ChatResult:
        body = remembered.body
        return cls(body, None, bool(body.get("emergency")), replayed, remembered.status)


class ChatService:
    def __init__(
        self,
        router: GuardedAgent,
        units: UnitOfWork,
        system_state: Callable[[], str] = lambda: "normal",
        enrich: Callable[[AgentReply], AgentReply] | None = None,
        instruments: AgentInstruments | None = None,
        admission: ChatAdmission | None = None,
    ) -> None:
        self._instruments = instruments
        self._admission = admission
        self._router = router
        self._units = units
        self._system_state = system_state
        self.enrich = enrich

    async def chat(self, message: str, user_id: str, key: str | None = None) -> ChatResult:
        """Answer and store one turn; with ``key`` (a valid Idempotency-Key), a request
        already answered gets its first reply again and writes nothing. A fallback reply
        that recorded nothing is not remembered: its retry is answered afresh, and each
        send's turn stays in the history."""
        if self._admission is not None:
            try:
                await self._admission.enter()
            except ChatOverloaded:
                self._count("shed")
                raise
        try:
            result = await self._chat(message, user_id, key)
        except UserInputError:
            raise
        except Exception:
            self._count("error")
            raise
        if not result.replayed:
            self._count("degraded" if result.degraded else "ok")
        return result

    def _count(self, outcome: str) -> None:
        if self._instruments is not None:
            self._instruments.chat_requests.add(1, {"outcome": outcome})

    async def _chat(self, message: str, user_id: str, key: str | None) -> ChatResult:
        request = ""
        if key is not None:
            request = fingerprint(SCOPE, {"userId": user_id, "message": message})
            remembered = await self._units.remembered(SCOPE, key)
            if remembered is not None:
                check_same_request(remembered, request)
                return ChatResult.replay(remembered)
        reply = await self._router.handle(AgentRequest(message=message, user_id=user_id))
        if self.enrich is not None and reply.degraded:
            reply = self.enrich(reply)
        context = trace.get_current_span().get_span_context()
        trace_id = format(context.trace_id, "032x") if context.is_valid else None
        body = seed_shape(reply, self._system_state(), trace_id)
        unit = Unit(
            writes=reply.writes,
            turn=ChatTurn(
                user_id=user_id,
                message=message,
                response=reply.content,
                agent=reply.agent,
                success=reply.success,
                degraded=reply.degraded,
                trace_id=trace_id,
            ),
            turn_key=turn_key(SCOPE, key, request) if reply.writes else None,
            turn_key_before=turn_key_before(SCOPE, key) if reply.writes else None,
            # A fallback that recorded nothing is not the request's answer: its retry with
            # the same key asks the agents again, as after a 503, instead of getting the
            # fallback back for the key's whole time.
            key=KeyToRemember(SCOPE, key, request, 200, lambda applied: body)
            if key is not None and (reply.writes or not reply.degraded)
            else None,
        )
        try:
            applied = await self._units.commit(unit)
        except KeyTaken as taken:
            # The same request, sent again while the first was being answered, committed
            # first: answer as it was answered, with nothing written by this one.
            remembered = await self._units.remembered(SCOPE, key or "")
            if remembered is None:
                raise
            check_same_request(remembered, request)
            return ChatResult.replay(remembered, replayed=not taken.ours)
        return ChatResult(body, applied.turn_id, reply.degraded)
