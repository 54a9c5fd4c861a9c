"""Programs joined by pipes, where no reader ever sees the end of its input after a failed writer.

A writer that dies halfway closes its end of the pipe just as one that finished does, and the
reader cannot tell a truncated stream from a whole one: `restic backup --stdin` would save a
cut-off dump, `psql` would commit half a restore. So this process keeps its own copy of each
pipe's write end open until every task that pipe waits for has succeeded; only then is it
closed and the reader sees the end of its input. A hold may also end its pipe with a last
line (`then`) this process writes only at that moment: a reader that needs it (psql's check
before its commit) refuses input that ended without it, as when this process was killed and
the programs it started finished on their own. When any task fails, the others are
cancelled (their programs stopped) and the first failure is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Coroutine, Sequence
from typing import Any

# Larger pipes than Linux's 64 KiB default: fewer wake-ups of both ends for the same data.
PIPE_BYTES = 1 << 20


class Pipeline:
    """Named tasks (each usually one program) run together; see the module docstring."""

    def __init__(self) -> None:
        self._work: dict[str, Coroutine[Any, Any, Any]] = {}
        self._holds: list[tuple[int, tuple[str, ...], bytes]] = []
        self._fds: list[int] = []
        self.results: dict[str, Any] = {}  # of each task that succeeded, by name
        self.finished_at: dict[str, float] = {}  # time.monotonic() of each success
        self.failed: str | None = None  # the name of the task that failed first

    def pipe(self) -> tuple[int, int]:
        """A new pipe (read end, write end); both are closed when `run` returns."""
        read, write = os.pipe()
        self._fds += [read, write]
        with contextlib.suppress(AttributeError, OSError):  # Linux only; a hint, not a need
            fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_BYTES)  # type: ignore[attr-defined]
        return read, write

    def add(self, name: str, work: Coroutine[Any, Any, Any]) -> None:
        if name in self._work:
            work.close()
            raise ValueError(f"a task named {name!r} is already in the pipeline")
        self._work[name] = work

    def hold_open(self, write_end: int, until: Sequence[str], then: bytes = b"") -> None:
        """Keep `write_end` open until every task in `until` has succeeded; then write `then`
        to it, and close it."""
        unknown = [name for name in until if name not in self._work]
        if unknown or write_end not in self._fds:
            raise ValueError(f"hold_open names unknown tasks or pipes: {unknown or write_end}")
        self._holds.append((write_end, tuple(until), then))

    async def run(self) -> dict[str, Any]:
        """Every task's result by name, once all have succeeded; else the first failure."""
        names = {asyncio.ensure_future(work): name for name, work in self._work.items()}
        pending = set(names)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    failure = task.exception() if not task.cancelled() else None
                    if task.cancelled() or failure is not None:
                        self.failed = names[task]
                        raise failure or asyncio.CancelledError()
                    self.results[names[task]] = task.result()
                    self.finished_at[names[task]] = time.monotonic()
                await self._release()
            return dict(self.results)
        finally:
            for task in pending:
                task.cancel()
            # Programs are stopped (their tasks end) before the pipes they use are closed.
            await asyncio.gather(*pending, return_exceptions=True)
            for fd in self._fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds = []

    async def _release(self) -> None:
        still_held = []
        for fd, until, then in self._holds:
            if all(name in self.finished_at for name in until):
                if then:  # in a thread: the reader may still be taking what came before
                    with contextlib.suppress(OSError):  # a reader gone says why itself
                        await asyncio.to_thread(_write_all, fd, then)
                os.close(fd)
                self._fds.remove(fd)
            else:
                still_held.append((fd, until, then))
        self._holds = still_held


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]
