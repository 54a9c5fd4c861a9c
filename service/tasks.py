"""Background tasks: run until the lifespan's exit stack unwinds, or stopped by their owner."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any

log = logging.getLogger("ers")


def run_in_background(
    stack: AsyncExitStack, coroutine: Coroutine[Any, Any, None], name: str
) -> None:
    """Run ``coroutine`` as a task until the stack unwinds to here."""
    task = asyncio.get_running_loop().create_task(coroutine, name=name)
    task.add_done_callback(_told_if_failed)
    stack.push_async_callback(cancel_and_wait, task)


def _told_if_failed(task: asyncio.Task[Any]) -> None:
    """A background task that ended by an error is logged when it ends, not at shutdown."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("the background task %s stopped: %r", task.get_name(), error, exc_info=error)


def spawn(tasks: set[asyncio.Task[Any]], coroutine: Coroutine[Any, Any, Any]) -> None:
    """Run ``coroutine`` as a task held in ``tasks`` until it ends: the loop keeps only a
    weak reference to a task, so one that nobody holds may be collected mid-run."""
    task = asyncio.get_running_loop().create_task(coroutine)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel ``tasks`` (None stands for one never started) and wait until each has ended;
    how they ended is not raised."""
    started = [task for task in tasks if task is not None]
    for task in started:
        task.cancel()
    await asyncio.gather(*started, return_exceptions=True)
