"""RepositorySharing: restic's lock rule inside one process (shared readers, one exclusive)."""

from __future__ import annotations

import asyncio

from backup.sharing import RepositorySharing


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def assert_free(sharing: RepositorySharing) -> None:
    """Nothing holds the repository any more: an exclusive use starts at once."""
    async with asyncio.timeout(1), sharing.exclusive():
        pass


async def test_shared_uses_run_together_and_an_exclusive_one_waits_for_them() -> None:
    sharing = RepositorySharing()
    order: list[str] = []
    first, second = sharing.shared(), sharing.shared()
    await first.__aenter__()
    await second.__aenter__()  # a second reader does not wait for the first

    async def exclusive() -> None:
        async with sharing.exclusive():
            order.append("exclusive")

    waiting = asyncio.create_task(exclusive())
    await settle()
    assert order == [] and not waiting.done()
    await first.__aexit__(None, None, None)
    await settle()
    assert order == []
    await second.__aexit__(None, None, None)
    await asyncio.wait_for(waiting, 5)
    assert order == ["exclusive"]
    await assert_free(sharing)


async def test_a_waiting_exclusive_use_goes_before_later_shared_ones() -> None:
    sharing = RepositorySharing()
    order: list[str] = []
    reader = sharing.shared()
    await reader.__aenter__()

    async def use(kind: str) -> None:
        async with sharing.exclusive() if kind == "exclusive" else sharing.shared():
            order.append(kind)

    exclusive = asyncio.create_task(use("exclusive"))
    await settle()
    later = asyncio.create_task(use("shared"))
    await settle()
    assert order == []
    await reader.__aexit__(None, None, None)
    await asyncio.wait_for(asyncio.gather(exclusive, later), 5)
    assert order == ["exclusive", "shared"]


async def test_a_cancelled_exclusive_wait_lets_the_shared_ones_behind_it_go() -> None:
    sharing = RepositorySharing()
    reader = sharing.shared()
    await reader.__aenter__()

    async def exclusive() -> None:
        async with sharing.exclusive():
            raise AssertionError("never reached: cancelled while waiting")

    waiting = asyncio.create_task(exclusive())
    await settle()
    entered: list[bool] = []

    async def shared() -> None:
        async with sharing.shared():
            entered.append(True)

    behind = asyncio.create_task(shared())
    await settle()
    assert entered == []
    waiting.cancel()
    await asyncio.wait_for(behind, 5)
    assert entered == [True]
    await reader.__aexit__(None, None, None)
    await assert_free(sharing)
