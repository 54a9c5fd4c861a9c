"""One chat turn: route the message through the guarded team and store the turn."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from service.admission import ChatAdmission, ChatOverloaded
from service.agents.base import AgentReply, AgentRequest
from service.errors import UserInputError
from service.instruments import AgentInstruments
from service.resilience.guard import GuardedAgent
from service.stores.base import ChatTurn, ConversationBackend


@dataclass(frozen=True, slots=True)
class ChatResult:
    reply: AgentReply
    turn_id: int
    system_state: str
    trace_id: str | None = None

    def as_seed_shape(self) -> dict[str, Any]:
        reply = self.reply
        return {
            "response": reply.content,
            "success": reply.success,
            "confidence": round(reply.confidence, 3),
            "agent": reply.agent,
            "emergency": reply.degraded,
            "incident": reply.incident,
            "systemState": self.system_state,
            "recovery": reply.recovery,
            # The kept trace of a degraded reply: GET /api/emergency/traces/{traceId}.
            "traceId": self.trace_id,
        }


class ChatService:
    def __init__(
        self,
        router: GuardedAgent,
        conversations: ConversationBackend,
        system_state: Callable[[], str] = lambda: "normal",
        enrich: Callable[[AgentReply], AgentReply] | None = None,
        instruments: AgentInstruments | None = None,
        admission: ChatAdmission | None = None,
    ) -> None:
        self._instruments = instruments
        self._admission = admission
        self._router = router
        self._conversations = conversations
        self._system_state = system_state
        self.enrich = enrich

    async def chat(self, message: str, user_id: str) -> ChatResult:
        if self._admission is not None:
            try:
                await self._admission.enter()
            except ChatOverloaded:
                self._count("shed")
                raise
        try:
            result = await self._chat(message, user_id)
        except UserInputError:
            raise
        except Exception:
            self._count("error")
            raise
        self._count("degraded" if result.reply.degraded else "ok")
        return result

    def _count(self, outcome: str) -> None:
        if self._instruments is not None:
            self._instruments.chat_requests.add(1, {"outcome": outcome})

    async def _chat(self, message: str, user_id: str) -> ChatResult:
        reply = await self._router.handle(AgentRequest(message=message, user_id=user_id))
        if self.enrich is not None and reply.degraded:
            reply = self.enrich(reply)
        context = trace.get_current_span().get_span_context()
        trace_id = format(context.trace_id, "032x") if context.is_valid else None
        turn_id = await self._conversations.record_turn(
            ChatTurn(
                user_id=user_id,
                message=message,
                response=reply.content,
                agent=reply.agent,
                success=reply.success,
                degraded=reply.degraded,
                trace_id=trace_id,
            )
        )
        return ChatResult(
            reply=reply, turn_id=turn_id, system_state=self._system_state(), trace_id=trace_id
        )
