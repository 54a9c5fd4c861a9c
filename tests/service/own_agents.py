"""Small agents of a user's own, loaded by import path (``tests.service.own_agents:...``) by
the tests of configured teams, in process and under ``ers serve``."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

from service.agents.base import AgentReply, AgentRequest
from service.errors import AgentFailure
from service.stores import Stores


class Coach:
    """Answers every message; counts its calls."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    async def handle(self, request: AgentRequest) -> AgentReply:
        self.calls += 1
        return AgentReply(f"{self.name} says: keep moving ({request.message})", self.name)


class BrokenCoach:
    """Fails every call the way a crashed dependency does: by raising."""

    guidance = "Rest today; the coach is back soon."

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    async def handle(self, request: AgentRequest) -> AgentReply:
        self.calls += 1
        raise AgentFailure(f"{self.name}: the coaching model is not loaded")


class MoodyCoach:
    """Fails every call, for the reason after the message's last colon: one exception class,
    as many causes as the messages name."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def handle(self, request: AgentRequest) -> AgentReply:
        raise AgentFailure(f"the coaching model is {request.message.rsplit(':', 1)[-1].strip()}")


class GatedCoach:
    """Holds every call until ``gate`` is set; counts the calls running at once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.gate = asyncio.Event()
        self.running = 0
        self.most_running = 0

    async def handle(self, request: AgentRequest) -> AgentReply:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        return AgentReply(f"{self.name} answered", self.name)


def coach(name: str, stores: Stores) -> Coach:
    return Coach(name)


def broken(name: str, stores: Stores) -> BrokenCoach:
    return BrokenCoach(name)


def gated(name: str, stores: Stores) -> GatedCoach:
    return GatedCoach(name)


def wrong_name(name: str, stores: Stores) -> Coach:
    return Coach(f"{name}-other")


def not_an_agent(name: str, stores: Stores) -> object:
    return {"name": name}


def failing_factory(name: str, stores: Stores) -> Coach:
    raise RuntimeError("the model file is missing")


async def async_factory(name: str, stores: Stores) -> Coach:
    return Coach(name)


def exiting_factory(name: str, stores: Stores) -> Coach:
    sys.exit("OPENAI_API_KEY is not set")  # as a script-minded agent module does


def loop_bound_factory(name: str, stores: Stores) -> Coach:
    asyncio.get_running_loop()  # as a factory that starts a background task does
    return Coach(name)


def interrupting_factory(name: str, stores: Stores) -> Coach:
    raise KeyboardInterrupt  # a prompt's Ctrl-C handler, a library giving up


# Set by a test: the factory builds the agent at start-up and fails when called again.
FACTORY_NOW_FAILS = False


def fails_at_restart(name: str, stores: Stores) -> Coach:
    if FACTORY_NOW_FAILS:
        raise RuntimeError("the model registry cannot be reached")
    return Coach(name)


NOT_CALLABLE = 42


class ClosingCoach(Coach):
    """Holds a connection of sorts: ``aclose`` releases it."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


def closing(name: str, stores: Stores) -> ClosingCoach:
    return ClosingCoach(name)


class BrokenClosingCoach(BrokenCoach):
    """Fails every call, and holds a connection of sorts: ``aclose`` writes a line to the
    file ``OWN_AGENT_CLOSE_LOG`` names, so a test outside the process sees it."""

    instances = 0

    def __init__(self, name: str) -> None:
        super().__init__(name)
        BrokenClosingCoach.instances += 1
        self.number = BrokenClosingCoach.instances

    async def aclose(self) -> None:
        with open(os.environ["OWN_AGENT_CLOSE_LOG"], "a") as log:
            log.write(f"closed instance {self.number}\n")


def broken_closing(name: str, stores: Stores) -> BrokenClosingCoach:
    return BrokenClosingCoach(name)


class NeverClosingCoach(Coach):
    """Its ``aclose`` never returns (a connection it waits on forever)."""

    async def aclose(self) -> None:
        await asyncio.Event().wait()


def never_closing(name: str, stores: Stores) -> NeverClosingCoach:
    return NeverClosingCoach(name)


class SyncCoach:
    """Its ``handle`` is a plain ``def``: it answers without being awaited."""

    def __init__(self, name: str) -> None:
        self.name = name

    def handle(self, request: AgentRequest) -> AgentReply:
        return AgentReply("Three sets of squats today.", self.name)


def sync_handle(name: str, stores: Stores) -> SyncCoach:
    return SyncCoach(name)


class TupleGuidanceCoach(BrokenCoach):
    """Its guidance ends with a stray comma, which makes it a tuple."""

    guidance = ("Rest today; the coach is back soon.",)  # as `= "...",` writes it


def tuple_guidance(name: str, stores: Stores) -> TupleGuidanceCoach:
    return TupleGuidanceCoach(name)


class MisreplyingCoach:
    """Returns something other than an ``AgentReply`` with text: ``reply`` itself."""

    def __init__(self, name: str, reply: object) -> None:
        self.name = name
        self.reply = reply

    async def handle(self, request: AgentRequest) -> AgentReply:
        return self.reply  # type: ignore[return-value]


def replies_a_dict(name: str, stores: Stores) -> MisreplyingCoach:
    return MisreplyingCoach(name, {"content": "a dict"})


def replies_none(name: str, stores: Stores) -> MisreplyingCoach:
    return MisreplyingCoach(name, None)


def replies_a_number(name: str, stores: Stores) -> MisreplyingCoach:
    return MisreplyingCoach(name, AgentReply(12345, name))  # type: ignore[arg-type]


def replies_nan_confidence(name: str, stores: Stores) -> MisreplyingCoach:
    return MisreplyingCoach(name, AgentReply("sure", name, confidence=float("nan")))


def replies_too_long(name: str, stores: Stores) -> MisreplyingCoach:
    return MisreplyingCoach(name, AgentReply("squats " * 200_000, name))  # 1.4 M characters


def replies_a_lone_surrogate(name: str, stores: Stores) -> MisreplyingCoach:
    return MisreplyingCoach(name, AgentReply("Squats today \ud83d", name))


def replies_a_nul(name: str, stores: Stores) -> MisreplyingCoach:
    return MisreplyingCoach(name, AgentReply("Squats\x00 today", name))


def replies_confidence_above_one(name: str, stores: Stores) -> MisreplyingCoach:
    return MisreplyingCoach(name, AgentReply("sure", name, confidence=85))


def replies_confidence_past_any_float(name: str, stores: Stores) -> MisreplyingCoach:
    return MisreplyingCoach(name, AgentReply("sure", name, confidence=10**400))


def replies_as_another_agent(name: str, stores: Stores) -> MisreplyingCoach:
    return MisreplyingCoach(name, AgentReply("Three sets of squats today.", "workout"))


def moody(name: str, stores: Stores) -> MoodyCoach:
    return MoodyCoach(name)


class UncancellableCoach(Coach):
    """Catches the cancellation of its call and goes on waiting: its timeout cannot cut it,
    nor can the service's shutdown."""

    async def handle(self, request: AgentRequest) -> AgentReply:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                # Where a test waits for it: the call was cut, and goes on.
                if marker := os.environ.get("ERS_TEST_CANCEL_CAUGHT"):
                    with open(marker, "a") as caught:
                        caught.write("caught\n")
                continue


def uncancellable(name: str, stores: Stores) -> UncancellableCoach:
    return UncancellableCoach(name)


class CatchesItsCutOnce(Coach):
    """Catches the cancellation of its call once and goes on, for longer than the router's
    limit (``except BaseException:`` around an await, then a slow cleanup)."""

    async def handle(self, request: AgentRequest) -> AgentReply:
        try:
            await asyncio.sleep(3600)
        except BaseException:
            await asyncio.sleep(60)
        return AgentReply("too late", self.name)


def catches_its_cut_once(name: str, stores: Stores) -> CatchesItsCutOnce:
    return CatchesItsCutOnce(name)


def takes_settings(name: str, stores: Stores, settings: dict[str, str]) -> Coach:
    return Coach(name)


def takes_nothing() -> Coach:
    return Coach("coach")


class ThreadStuckCoach(Coach):
    """Hands a synchronous call that never returns to a thread, as advised for blocking work."""

    async def handle(self, request: AgentRequest) -> AgentReply:
        if marker := os.environ.get("ERS_TEST_CANCEL_CAUGHT"):
            with open(marker, "a") as called:
                called.write("in a thread\n")
        await asyncio.to_thread(threading.Event().wait)
        return AgentReply("never", self.name)


def thread_stuck(name: str, stores: Stores) -> ThreadStuckCoach:
    return ThreadStuckCoach(name)


def slow_at_restart(name: str, stores: Stores) -> BrokenCoach:
    """Fails every call; called again (a restart), it loads its model until the file ``go``
    appears in the folder ``OWN_AGENT_RESTART_DIR`` names (20 s at most), writing ``building``
    there as it begins and ``returned`` (saying whether it was let go) as it ends, so a test
    outside the process sees what was served meanwhile."""
    folder = os.environ.get("OWN_AGENT_RESTART_DIR")
    if folder is None or not os.path.exists(os.path.join(folder, "started")):
        if folder is not None:
            open(os.path.join(folder, "started"), "w").close()
        return BrokenCoach(name)
    open(os.path.join(folder, "building"), "w").close()
    let_go = False
    for _ in range(400):
        if let_go := os.path.exists(os.path.join(folder, "go")):
            break
        time.sleep(0.05)
    with open(os.path.join(folder, "returned"), "w") as returned:
        returned.write("let go" if let_go else "not let go")
    return BrokenCoach(name)
