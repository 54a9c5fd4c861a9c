"""POST /chat: the one endpoint users talk to."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.chat.idempotency import (
    HEADER,
    MAX_KEY_LENGTH,
    REPLAY_HEADER,
    InvalidIdempotencyKey,
    valid_key,
)
from service.errors import UserInputError
from service.web.deps import Chat, Settings, cut_by_the_stop
from service.web.json_route import JsonRoute
from service.web.routes.json_types import JsonText

router = APIRouter(route_class=JsonRoute, tags=["chat"])

USER_ID_PATTERN = r"^[A-Za-z0-9_.@:-]+$"


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The limit is the setting max_message_chars, checked by the route so that the reply
    # can say what to do; the OpenAPI document shows the configured value.
    message: JsonText = Field(description="What the user says")
    userId: str = Field(
        "anonymous",
        min_length=1,
        max_length=128,
        pattern=USER_ID_PATTERN,
        description="Who is talking: letters, digits and _ . @ : -; left out or null: anonymous",
    )

    @field_validator("userId", mode="before")
    @classmethod
    def _null_is_anonymous(cls, value: object) -> object:
        # A client without a user at hand often sends null rather than leaving the field out.
        return "anonymous" if value is None else value


class ChatResponse(BaseModel):
    response: str
    success: bool
    confidence: float = Field(ge=0, le=1)
    agent: str
    emergency: bool
    incident: str | None
    systemState: str
    recovery: dict[str, Any] | None
    traceId: str | None = Field(
        None,
        description="This reply's trace; kept (GET /api/emergency/traces/{traceId}) when an "
        "agent call in it failed, not when a fallback answered without calling the agent",
    )


# The header is read from the request rather than declared as a Header() parameter, which
# FastAPI resolves on every request at a cost of about 14 us; the schema still documents it.
IDEMPOTENCY_KEY_DOC: dict[str, Any] = {
    "parameters": [
        {
            "name": HEADER,
            "in": "header",
            "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
            "description": "Optional, up to 128 printable ASCII characters (a UUID): a retry "
            "with the same key gets the first reply again and writes nothing",
        }
    ]
}


def idempotency_key(request: Request) -> str | None:
    """The request's valid Idempotency-Key, or None; raises InvalidIdempotencyKey (422)."""
    sent = request.headers.getlist(HEADER)
    if len(sent) > 1:  # which one names the request? A proxy or a client bug: say so
        raise InvalidIdempotencyKey(
            f"the request carries {len(sent)} {HEADER} headers; send exactly one per request"
        )
    return valid_key(sent[0] if sent else None)


@router.post("/chat", response_model=ChatResponse, openapi_extra=IDEMPOTENCY_KEY_DOC)
async def chat(body: ChatRequest, chat: Chat, settings: Settings, request: Request) -> Any:
    message = body.message.strip()
    if not message:
        raise HTTPException(422, "message is empty; send some text to answer")
    if len(body.message) > settings.max_message_chars:
        raise HTTPException(
            422,
            f"message is {len(body.message)} characters long; the limit is "
            f"{settings.max_message_chars}, so shorten it or split it up",
        )
    try:
        result = await chat.chat(message, body.userId, idempotency_key(request))
    except UserInputError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    except asyncio.CancelledError:  # the server stopped, its grace for requests ran out
        raise cut_by_the_stop(
            "the service stopped before this chat was answered: send it again once it is "
            f"back (with an {HEADER}, it is answered once, whatever became of this one)"
        ) from None
    if result.replayed:
        headers = {REPLAY_HEADER: "true"}
        return JSONResponse(result.as_seed_shape(), status_code=result.status, headers=headers)
    return result.as_seed_shape()
