"""The agent protocol: a name and one async ``handle``. Users implement it for their own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from service.agents.failure_kinds import BadResponse
from service.stores.writes import Write

# The seed's names for the agents, accepted wherever the API takes an agent name.
ALIASES = {"mca": "router", "npa": "nutrition", "wpa": "workout", "bma": "budget"}


def canonical_agent_name(name: str) -> str:
    lowered = name.strip().lower()
    return ALIASES.get(lowered, lowered)


@dataclass(frozen=True, slots=True)
class AgentRequest:
    message: str
    user_id: str
    intent: str | None = None
    synthetic: bool = False
    # Writes an earlier agent of this turn asked for, not yet committed: read through them.
    pending: tuple[Write, ...] = ()


@dataclass(frozen=True, slots=True)
class AgentReply:
    content: str
    agent: str
    confidence: float = 1.0
    success: bool = True
    data: dict[str, Any] = field(default_factory=dict)
    # Set by a guard when the agent could not answer and a fallback did.
    degraded: bool = False
    fallback: str | None = None
    incident: str | None = None
    recovery: dict[str, Any] | None = None
    # What the agent wants stored; the chat service commits it with the turn, or nothing.
    writes: tuple[Write, ...] = ()
    # Whether the answer may stand in for the user's later request when the agent cannot
    # (a last good answer). None: only when it carries no writes, as a confirmation of a
    # recorded write ("Recorded $25.00") answers no later request; a plan that also saves
    # the preferences it was asked for does.
    reusable: bool | None = None


@runtime_checkable
class Agent(Protocol):
    name: str

    async def handle(self, request: AgentRequest) -> AgentReply: ...


# The longest reply an agent's call may return, as a remote agent's reply may be 1 MiB.
MAX_REPLY_CHARS = 1_048_576


def checked_reply(name: str, reply: object) -> AgentReply:
    """``reply`` when it is an ``AgentReply`` with text (not blank, ``MAX_REPLY_CHARS`` at
    most) in the agent's own name (the router's: any) and a confidence from 0 to 1;
    otherwise a ``BadResponse`` of agent ``name``, whose guard then falls back (not the
    router's, which would pass it on)."""
    if isinstance(reply, AgentReply) and isinstance(reply.content, str):
        if len(reply.content) > MAX_REPLY_CHARS:
            # Stored with the turn and sent to the user: no chat answer is that long.
            raise BadResponse(
                f"agent '{name}' returned {len(reply.content):,} characters; a reply is at "
                f"most {MAX_REPLY_CHARS:,}"
            )
        if not reply.content or reply.content.isspace():
            # No answer: the user would get nothing with "success": true.
            raise BadResponse(f"agent '{name}' returned an empty reply; an answer has text")
        if not reply.content.isascii() and not _encodes(reply.content):
            # A lone surrogate (the JSON escape of half a UTF-16 pair, as a model cut off
            # inside an emoji writes it) is a str but no text: storing the turn would fail
            # with a 500 after the agent's call had passed.
            raise BadResponse(
                f"agent '{name}' returned text holding a lone surrogate (half of a UTF-16 "
                "pair), which can be neither stored nor sent"
            )
        if "\x00" in reply.content:
            # PostgreSQL's text holds no NUL: storing the turn would fail with a 503 that no
            # retry ends, the same on every chat this agent answers so.
            raise BadResponse(
                f"agent '{name}' returned text holding a NUL character, which the state "
                "stores cannot hold"
            )
        if reply.agent != name and name != "router":
            # Only the router passes on another agent's reply. Said in another's name, the
            # chat credits that agent, and no last good answer is ever kept for this one.
            raise BadResponse(
                f"agent '{name}' returned a reply in the name of {reply.agent!r}; an agent's "
                f"reply names the agent itself (AgentReply(agent='{name}', ...))"
            )
        writes = reply.writes
        if not isinstance(writes, tuple | list) or (
            writes and not all(isinstance(w, Write) for w in writes)
        ):
            # The chat commits them after the guard passed the reply: a write of another
            # type, or one not in a tuple, failed the turn with a 500 there.
            raise BadResponse(f"agent '{name}' returned {_what_writes(writes)}")
        confidence = reply.confidence
        if isinstance(confidence, bool) or not isinstance(confidence, int | float):
            said = f"a {type(confidence).__name__}"
        elif not 0 <= confidence <= 1:  # NaN compares false; math.isfinite(10**400) raises
            # A float formats as it is (nan, inf, 1e+305); an int past any float cannot.
            past = isinstance(confidence, int) and abs(confidence) >= 2**1000
            said = "an integer past any float" if past else f"{confidence:g}"
        else:
            return reply
        # The chat's reply carries it: past the agent's guard it would fail the turn,
        # already stored, with a 500.
        raise BadResponse(
            f"agent '{name}' returned a confidence of {said}; it must be a number from 0 to 1"
        )
    what = f"a {type(reply).__name__}" if reply is not None else "None"
    if isinstance(reply, AgentReply):
        what = f"an AgentReply with {type(reply.content).__name__} content"
    raise BadResponse(f"agent '{name}' returned {what}, not an AgentReply with text content")


def _what_writes(writes: object) -> str:
    kinds = "AddExpense, SetBudgetLimit or UpdateProfile (service.stores.writes)"
    if isinstance(writes, tuple | list):
        odd = next(write for write in writes if not isinstance(write, Write))
        said = f"writes holding a {type(odd).__name__}"
    else:
        kind = type(writes).__name__
        said = f"writes as {'an' if kind[0] in 'AEIOU' else 'a'} {kind}"
    return f"{said}; writes is a tuple of {kinds}"


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
