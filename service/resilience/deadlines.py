"""Per-call timeouts without a timer per call.

``asyncio.timeout`` schedules and cancels a timer handle on every call, which costs several
microseconds on a path that should cost next to nothing. Here every call registers its
deadline in a dict, and one timer, armed for the earliest deadline, cancels the tasks that
overran. With a fixed timeout, deadlines arrive in order, so the armed timer almost never
has to move. A call cut this way raises ``TimeoutError`` in the caller, as asyncio's would.

No timer cuts a call while it runs without a pause (a ``time.sleep``, a synchronous read):
one whose last step alone took longer than its limit raises ``HeldTheLoop`` as it ends, so
that it is a failure of the agent, not a success that held every other request up.

A call that catches its cut and goes on holds the calls around it past their own limits: when
one of theirs cuts it there, the overrun is the inner call's, which fails with ``TimeoutError``
for its own limit, and the limits around it are taken back.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, TypeVar

from service.errors import HeldTheLoop, RaisedBaseException, StoreUnavailable, cut_waiting

T = TypeVar("T")


class _Deadline:
    __slots__ = ("task", "at", "limit_s", "expired")

    def __init__(self, task: asyncio.Task[object], at: float, limit_s: float) -> None:
        self.task = task
        self.at = at
        self.limit_s = limit_s
        self.expired = False


class _Resume:
    """Continues a coroutine that was already stepped once, as ``await`` would have."""

    __slots__ = ("_coroutine", "_first", "_limit_s", "_budget_s")

    def __init__(
        self, coroutine: Coroutine[Any, Any, T], first: Any, limit_s: float, budget_s: float | None
    ) -> None:
        self._coroutine = coroutine
        self._first = first
        self._limit_s = limit_s
        self._budget_s = budget_s

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, value = self._coroutine, self._first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # cancellation and the like go to the coroutine
                try:
                    value = coroutine.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                stepped = time.monotonic()
                try:
                    value = coroutine.send(sent)
                except StopIteration as done:
                    # A last step longer than the limit ended before the timer could run.
                    if (took := time.monotonic() - stepped) > self._limit_s:
                        _held(stepped, took, _limit(self._limit_s, self._budget_s))
                    return done.value
                except Exception:
                    raise
                except BaseException as raised:
                    _raise_own(raised)


class DeadlineWatchdog:
    """Cancels calls that run past their deadline; one per event loop is enough."""

    def __init__(self) -> None:
        self._pending: dict[_Deadline, None] = {}
        # Deadlines that expired while their call has not ended yet, by task: inner last.
        self._cut: dict[asyncio.Task[object], list[_Deadline]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, call: Awaitable[T], timeout_s: float, budget_s: float | None = None) -> T:
        """Await ``call`` within ``timeout_s``.

        A coroutine is stepped once here first: an agent that answers without waiting on
        anything (the common case for in-process agents) finishes in that step and needs no
        deadline, since no timeout could have interrupted it anyway. Only a call that
        suspends is registered, with its deadline counted from the start. ``budget_s``: the
        retries' whole budget, when what was left of it set ``timeout_s``."""
        if isinstance(call, Coroutine):
            started = time.monotonic()
            try:
                first = call.send(None)
            except StopIteration as done:
                # No timer can cut a step: one longer than the limit held everyone up.
                if (took := time.monotonic() - started) > timeout_s:
                    _held(started, took, _limit(timeout_s, budget_s))
                return done.value
            except Exception:
                raise
            except BaseException as raised:
                _raise_own(raised)
            resumed = _Resume(call, first, timeout_s, budget_s)
            return await self._with_deadline(resumed, started, timeout_s, budget_s)
        return await self._with_deadline(call, time.monotonic(), timeout_s, budget_s)

    async def _with_deadline(
        self, awaitable: Awaitable[T], started: float, timeout_s: float, budget_s: float | None
    ) -> T:
        task = asyncio.current_task()
        if task is None:  # not inside a task: nothing to cancel, use asyncio's own timer
            async with asyncio.timeout_at(started + timeout_s):
                return await awaitable
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A new event loop (tests run one per test): the old loop's timer will never fire.
            self._loop, self._timer, self._timer_at = loop, None, float("inf")
            self._pending.clear()
            self._cut.clear()
        # The loop's clock is time.monotonic, so a deadline taken from either agrees.
        deadline = _Deadline(task, started + timeout_s, timeout_s)
        self._pending[deadline] = None
        if deadline.at < self._timer_at:
            self._arm(loop, deadline.at)
        try:
            result = await awaitable
        except asyncio.CancelledError as cut:
            # Half its limit and more spent waiting for a store: the store did not answer.
            waited_on = cut_waiting(task, deadline.at, timeout_s / 2)
            if not deadline.expired:  # the task's cancellation, or the call's own
                _raise_own(cut)
            self._take_back_outer_cuts(task, deadline)
            if task.uncancel() == 0:
                if waited_on is not None:
                    limit = _limit(timeout_s, budget_s)
                    reason = f"no answer within the call's time limit ({limit})"
                    raise StoreUnavailable(waited_on, reason) from None
                raise TimeoutError(_took_longer(timeout_s, budget_s)) from None
            raise
        except BaseException:
            if deadline.expired:  # the call made its cut into another error: taken back
                task.uncancel()
            raise
        finally:
            self._pending.pop(deadline, None)
            if deadline.expired:
                self._forget_cut(task, deadline)
        if deadline.expired:  # the call caught its cut (and those around it) and answered late:
            self._take_back_outer_cuts(task, deadline)  # no answer, and its own overrun
            if task.uncancel() == 0:
                raise TimeoutError(_took_longer(timeout_s, budget_s))
            raise asyncio.CancelledError  # the task's own cancellation, caught with its cut
        return result

    def _take_back_outer_cuts(self, task: asyncio.Task[object], deadline: _Deadline) -> None:
        """The call of ``deadline`` overran its limit, caught that cut and went on until the
        limit of a call around it cut it too (an agent's ``except BaseException``, under the
        router's limit). When nothing but such limits cancelled the task, the overrun is
        this call's: theirs are taken back, so the call fails for its own limit (its breaker,
        its fallbacks) and the calls around it go on, instead of the router's timeout
        isolating the router for an agent's fault. Each goes on with its whole limit again
        from now, so what it calls next (the fallbacks) still has a limit above it. A cut
        made before this call began is its caller's own overrun, and is never taken back."""
        began = deadline.at - deadline.limit_s
        outer = [cut for cut in self._cut.get(task, ()) if cut is not deadline and cut.at > began]
        if outer and task.cancelling() == 1 + len(outer) and self._loop is not None:
            for cut in outer:
                cut.expired = False
                self._forget_cut(task, cut)
                task.uncancel()
                cut.at = time.monotonic() + cut.limit_s
                self._pending[cut] = None
                if cut.at < self._timer_at:
                    self._arm(self._loop, cut.at)

    def _forget_cut(self, task: asyncio.Task[object], deadline: _Deadline) -> None:
        cuts = self._cut.get(task)
        if cuts is not None and deadline in cuts:
            cuts.remove(deadline)
            if not cuts:
                del self._cut[task]

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(at, self._expire, loop)
        self._timer_at = at

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer, self._timer_at = None, float("inf")
        now = loop.time()
        earliest = float("inf")
        for deadline in list(self._pending):
            if deadline.at <= now:
                del self._pending[deadline]
                deadline.expired = True
                self._cut.setdefault(deadline.task, []).append(deadline)
                deadline.task.cancel()
            elif deadline.at < earliest:
                earliest = deadline.at
        if earliest != float("inf"):
            self._arm(loop, earliest)


def _raise_own(raised: BaseException) -> None:
    """Re-raise what a step of the call raised that is no Exception: as it is when it is the
    cancellation of the task (a code's cleanup that awaits, as ``async with`` does, passes
    it on in a later step), else as the agent's own failure. Let through, an agent's own
    KeyboardInterrupt or SystemExit failed the chat with a 500, and its own CancelledError
    ended the chat's task, past the breaker and the fallbacks."""
    if isinstance(raised, asyncio.CancelledError):
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise raised
    raise RaisedBaseException(raised) from raised


# When each task last had a call fail as HeldTheLoop: the calls around it (the router's, over
# its agent's) ran as long, but the one that held the loop has been named and failed.
_HELD: weakref.WeakKeyDictionary[asyncio.Task[Any], float] = weakref.WeakKeyDictionary()


def _held(step_started: float, took_s: float, limit: str) -> None:
    """Raise HeldTheLoop for a step that began at ``step_started``, unless a call inside it
    already did."""
    task = asyncio.current_task()
    if task is None:
        raise HeldTheLoop(took_s, limit)
    if _HELD.get(task, -1.0) >= step_started:
        return
    _HELD[task] = time.monotonic()
    raise HeldTheLoop(took_s, limit)


def _took_longer(timeout_s: float, budget_s: float | None) -> str:
    return f"the call took longer than {_limit(timeout_s, budget_s)}"


def _limit(timeout_s: float, budget_s: float | None) -> str:
    if budget_s is None:
        return f"{round(timeout_s, 2):g} s"
    return (
        f"the {round(timeout_s, 2):g} s left of its {round(budget_s, 2):g} s budget for "
        "retries (total_budget_s)"
    )
