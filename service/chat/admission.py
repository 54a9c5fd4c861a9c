"""How many chats start in one turn of the event loop, so the operator's requests get through.

An in-process agent answers without waiting on anything, so a chat runs start to finish in a
single step of the loop. With many clients, every turn of the loop then runs one such step
per waiting connection before it reads a socket again, and a status request, a health
probe or an Alertmanager webhook that arrives meanwhile queues behind all of them: under a
chat flood, the requests that drive the response are the slowest ones.

``ChatAdmission`` lets ``per_turn`` chats start in a turn (at most twice that when the line
has just emptied; see ``_next_turn``). The others wait, in order of arrival, and are let in
at the start of the following turns, so a turn stays short and anything that is not a chat
is served within a turn or two. Only the order of work changes: the loop stays busy with
chats as long as there are any. A chat that would have to wait
behind ``max_waiting`` others is turned away at once (``ChatOverloaded``), rather than
holding memory and a connection for an answer that would come too late.

A chat that arrives while none wait and the turn still has room starts at once, without
yielding, so a service that is not saturated pays nothing but a counter.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from opentelemetry.metrics import Meter

from service.errors import ErsError
from service.resilience.instruments import value_gauge


class ChatOverloaded(ErsError):
    """Too many chats are already waiting to start; the client should retry shortly."""

    def __init__(self, waiting: int) -> None:
        if waiting == 0:
            line = "no chat may wait"
        elif waiting == 1:
            line = "1 chat is already waiting to start"
        else:
            line = f"{waiting} chats are already waiting to start"
        super().__init__(f"the service is at capacity ({line}); retry in a second")


class ChatAdmission:
    """Lets at most ``per_turn`` chats start per turn of the event loop (0: no limit)."""

    def __init__(self, per_turn: int, max_waiting: int) -> None:
        if per_turn < 0 or max_waiting < 0:
            raise ValueError("per_turn and max_waiting must not be negative")
        self.per_turn = per_turn
        self.max_waiting = max_waiting
        self._started = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._turn_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def enter(self) -> None:
        """Return when this chat may start; raise ``ChatOverloaded`` if the queue is full."""
        if not self.per_turn:
            return
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A new event loop (tests run one per test): the old one's waiters are gone.
            self._loop, self._started, self._turn_scheduled = loop, 0, False
            self._waiting.clear()
        if not self._turn_scheduled:
            # Runs at the start of the next turn: a new turn, a new allowance.
            loop.call_soon(self._next_turn)
            self._turn_scheduled = True
        if not self._waiting and self._started < self.per_turn:
            self._started += 1
            return
        if len(self._waiting) >= self.max_waiting:
            raise ChatOverloaded(len(self._waiting))
        admitted = loop.create_future()
        self._waiting.append(admitted)
        try:
            await admitted
        except (asyncio.CancelledError, GeneratorExit):
            # Cancelled (or closed) in line: leave it (one let in has left it already).
            with contextlib.suppress(ValueError):
                self._waiting.remove(admitted)
            raise

    def _next_turn(self) -> None:
        """Let the next chats in line start; they run in the coming turn, and this is
        scheduled again to follow them.

        A callback cannot tell where a turn of the loop begins: the allowance runs from one
        call of this to the next, which spans the end of one turn and the start of the
        next. While chats wait, every turn runs the ``per_turn`` let in; when the line has
        just emptied, a turn may run those and up to ``per_turn`` newcomers."""
        self._turn_scheduled = False
        self._started = 0
        while self._waiting and self._started < self.per_turn:
            admitted = self._waiting.popleft()
            if not admitted.done():
                admitted.set_result(None)
                self._started += 1
        if self._started and self._loop is not None:
            # Those let in run in the coming turn; no chat that arrives meanwhile starts
            # ahead of them.
            self._started = self.per_turn
            self._loop.call_soon(self._next_turn)
            self._turn_scheduled = True


def register_admission_metrics(meter: Meter, admission: ChatAdmission) -> None:
    """``ers_chat_waiting``: chats in line to start; turned-away chats are counted in
    ``ers_chat_requests_total{outcome="shed"}``."""
    value_gauge(
        meter,
        "ers_chat_waiting",
        "Chats waiting for their turn to start",
        lambda: admission.waiting,
    )
