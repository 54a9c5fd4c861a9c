"""`ers serve`'s server: uvicorn's, with the exit status, the signals and the end of the
tasks and threads left when it is down that a service run under a supervisor needs."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger("ers")


HANG_UP = (
    "SIGHUP: ERS stops as for SIGTERM (a terminal closed, or a reload asked for: ers serve "
    "reads its settings and its agents at start only; start it again to apply a change)"
)


def _said_soon(words: str) -> None:
    """Logged from a signal handler by the event loop, not in the middle of another line."""
    try:
        asyncio.get_running_loop().call_soon_threadsafe(log.warning, words)
    except RuntimeError:  # no loop runs (the start, the end): said at once
        log.warning(words)


class GracefulServer:
    """uvicorn's server, but a SIGTERM, SIGINT or SIGHUP (``HANG_UP``) that shut it down
    cleanly exits 0.

    uvicorn re-raises the signal after a graceful shutdown, which makes the exit status
    look like a crash to supervisors; ERS finishes in-flight requests, runs its shutdown
    (final backup, telemetry flush) and then exits normally.
    """

    def __init__(self, config: object) -> None:
        import uvicorn

        class _Server(uvicorn.Server):
            @contextmanager
            def capture_signals(self) -> Iterator[None]:
                handled = (signal.SIGINT, signal.SIGTERM)
                original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
                original[signal.SIGHUP] = signal.signal(signal.SIGHUP, self.hang_up)
                try:
                    yield
                finally:
                    for sig, handler in original.items():
                        signal.signal(sig, handler)

            def hang_up(self, sig: int, frame: FrameType | None) -> None:
                _said_soon(HANG_UP)
                self.handle_exit(signal.SIGTERM, frame)

            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                await super().startup(sockets)
                if self.started and sockets:
                    # uvicorn says where it listens only for the sockets it bound itself.
                    self._log_started_message(sockets)

        self._server = _Server(config)  # type: ignore[arg-type]

    @property
    def started(self) -> bool:
        return bool(self._server.started)

    def run(self, listener: socket.socket) -> None:
        """``asyncio.run`` of the server, but a task that will not end (an agent that catches
        the cancellation of its call) does not hold the process once the server is down:
        asyncio.run waits for every task it cancels, for ever."""
        factory = self._server.config.get_loop_factory()
        loop = factory() if factory is not None else asyncio.new_event_loop()
        threads_done = True
        try:
            loop.run_until_complete(self._server.serve(sockets=[listener]))
        finally:
            try:
                _end_tasks(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                # Python 3.11 waits for the threads without a limit, and so does its exit.
                ending = loop.create_task(loop.shutdown_default_executor())
                loop.run_until_complete(asyncio.wait({ending}, timeout=TASKS_END_GRACE_S))
                threads_done = ending.done()
            finally:
                loop.close()
        if not threads_done:  # work handed to a thread that never returns (asyncio.to_thread)
            log.warning(
                "threads of asyncio.to_thread still run %g s after the shutdown (an agent's "
                "synchronous call that never returns?): ERS stops without them",
                TASKS_END_GRACE_S,
            )
            logging.shutdown()
            os._exit(0 if self.started else 1)


# How long the tasks left when the server is down get to end once cancelled.
TASKS_END_GRACE_S = 5.0


def _end_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    _, left = loop.run_until_complete(asyncio.wait(tasks, timeout=TASKS_END_GRACE_S))
    if left:
        log.warning(
            "%d task(s) did not end when cancelled (an agent that catches "
            "asyncio.CancelledError holds its chat so): ERS stops without them",
            len(left),
        )
