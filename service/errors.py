"""Exceptions named for what went wrong, shared by agents, guards and routes."""

from __future__ import annotations

import asyncio
import time
import unicodedata
import weakref

# How the 404 for a path no route takes begins: the CLI tells it from ERS's own 404s (an
# incident or a snapshot that is not there) to say --url is wrong.
NO_ROUTE = "ERS has no route"

# The header of a kept trace answered from memory alone: why the archive's spans of it were
# not read. ``ers trace`` tells the operator that spans kept elsewhere may be missing.
ARCHIVE_NOT_READ = "ERS-Archive-Not-Read"


# The most of a client's value a reply or a log line repeats: a path, a name, may be as long
# as a request line allows.
ECHOED_CHARS = 200


# Characters that, shown raw in a line an operator reads, break it or reorder it: control
# characters and the line and paragraph separators (by category), and directional formatting
# (embeddings, overrides, isolates, marks), which reorders what is read, as "\u202eevil" does.
BREAKING = frozenset({"Cc", "Zl", "Zp"})
BIDI_CONTROLS = frozenset(
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
)


def breaks_a_line(char: str) -> bool:
    return char in BIDI_CONTROLS or unicodedata.category(char) in BREAKING


def cut_short(text: str, most: int = ECHOED_CHARS) -> str:
    """``text`` as a reply repeats it: whole up to ``most`` characters, else cut there."""
    return text if len(text) <= most else f"{text[:most]}…"


class ErsError(Exception):
    """Base of the errors ERS raises on purpose."""


class UserInputError(ErsError):
    """The user's request cannot be served as given; never counts against a breaker."""

    call_outcome = "user_error"  # how a guard that passes it on counts the call
    status = 422  # the HTTP status a route answers it with


class StoreUnavailable(ErsError):
    """A state store could not be read or written (disk, lock, database server, paused for
    a rollback). A guard passes it on and it counts against no breaker: the stores check
    reports the store, and an agent isolated for it would still turn users away once the
    store is back."""

    call_outcome = "store_unavailable"

    def __init__(self, component: str, reason: str) -> None:
        self.component = component
        self.reason = reason
        verb = "are" if self.several else "is"
        super().__init__(f"{self.stores} {verb} unavailable: {reason}")

    @property
    def several(self) -> bool:
        # "budgets and conversations": a unit of work over several files
        return " and " in self.component

    @property
    def components(self) -> list[str]:
        """Each store by its component's name."""
        return self.component.split(" and ")

    @property
    def stores(self) -> str:
        """The store or stores, in words: "the budgets store", "the budgets and
        conversations stores"."""
        return f"the {self.component} {'stores' if self.several else 'store'}"


class StoreDamaged(StoreUnavailable):
    """A store's file whose content SQLite finds damaged: no retry helps, a rollback of the
    component does."""

    call_outcome = "store_unavailable"


# The store each task was waiting on when it was last cancelled: since when it waited, and
# when it was cut. A call cut by its time limit while it had long waited for a store failed
# for the store, not for the agent that made it.
_CUT_WAITING: weakref.WeakKeyDictionary[asyncio.Task[object], tuple[str, float, float]] = (
    weakref.WeakKeyDictionary()
)


def note_cut_waiting(component: str, since: float) -> None:
    """Said by a store whose wait (for its database, or a file's lock), begun at ``since``
    (a ``time.monotonic()``), was cancelled."""
    task = asyncio.current_task()
    if task is not None:
        _CUT_WAITING[task] = (component, since, time.monotonic())


def cut_waiting(task: asyncio.Task[object], after: float, longer_than: float) -> str | None:
    """The store ``task`` was waiting on when it was last cancelled, if it was cut at or after
    ``after`` (the call's deadline: not an agent's own earlier cut) and had waited longer
    than ``longer_than`` seconds (not a read that began as the limit ran out); once."""
    component, since, cut = _CUT_WAITING.pop(task, ("", 0.0, -1.0))
    return component if cut >= after and cut - since > longer_than else None


class StateFileUnreadable(StoreUnavailable):
    """A state file SQLite cannot open at start (overwritten, damaged): the start is refused
    in one line saying the way out."""


class StorePaused(StoreUnavailable):
    """The store is closed for a moment while a rollback swaps its state: no failure of the
    agent that reads it. A guard passes it on, so the chat gets a 503 with Retry-After."""

    call_outcome = "store_paused"


class StatementRefused(StoreUnavailable):
    """PostgreSQL refused a statement (a value it cannot store, a broken constraint) and
    rolled it back: unlike a lost connection, it is known that nothing of it committed."""


class CommitUnknown(StoreUnavailable):
    """The connection to PostgreSQL was lost while a transaction's COMMIT was on its way:
    the server may have committed it. Only a look at the rows it wrote can tell."""


class DependencyError(ErsError):
    """Something an agent depends on failed; recoverable, counts against the breaker."""


class AgentFailure(ErsError):
    """An agent failed while processing a request."""


class RaisedBaseException(AgentFailure):
    """A call raised a BaseException that is no Exception (KeyboardInterrupt, SystemExit, a
    CancelledError of its own): a failure of the agent, not a stop of the chat's task."""

    def __init__(self, raised: BaseException) -> None:
        name = type(raised).__name__
        detail = f" ({cut_short(str(raised))})" if str(raised) else ""
        super().__init__(
            f"the agent raised {name}{detail}, which stops programs and tasks, not a call; "
            "an agent fails a call by raising an Exception"
        )


class AgentRestartFailed(ErsError):
    """The responder's restart_agent called a Python agent's factory again, and it failed:
    the instance the agent had stays in place."""


class HeldTheLoop(AgentFailure):
    """A call ran one synchronous step longer than its whole time limit: no timer could cut
    it, and no other request was served meanwhile. Not retried: another try holds it again."""

    def __init__(self, took_s: float, limit: str) -> None:
        super().__init__(
            f"the call held the event loop for {took_s:.1f} s without a pause, longer than its "
            f"{limit} limit, so no other request was served meanwhile: the agent's code "
            "sleeps, reads or computes synchronously; run that part with asyncio.to_thread"
        )


class UnknownAgent(ErsError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no agent named '{cut_short(name)}'; known agents: {', '.join(known)}")
        self.name = name
