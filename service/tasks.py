"""Background tasks tied to the lifespan's exit stack."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any


def run_in_background(
    stack: AsyncExitStack, coroutine: Coroutine[Any, Any, None], name: str
) -> None:
    """Run ``coroutine`` as a task until the stack unwinds to here."""
    task = asyncio.get_running_loop().create_task(coroutine, name=name)

    async def stop() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    stack.push_async_callback(stop)
