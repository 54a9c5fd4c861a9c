"""What the status reads of the repository's problem: restic (a repository open, about half
a second of key derivation) is asked by one status read at a time, however many arrive."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from service.backups.service import PROBLEM_READ_EVERY_S, BackupService


class SlowRestic:
    """A repository open that takes until ``opened`` is set, counting the opens asked."""

    repository = "rest:https://backups.example/ers"  # remote: no config file between asks

    def __init__(self) -> None:
        self.asked = 0
        self.opened = asyncio.Event()

    async def verify_repository(self, *, thorough: bool = False) -> str:
        assert thorough
        self.asked += 1
        await self.opened.wait()
        return "5c4da283"

    def read_only(self) -> str | None:
        return None


def service_over(restic: SlowRestic) -> BackupService:
    service = BackupService.__new__(BackupService)
    service.manager = SimpleNamespace(  # type: ignore[assignment]
        restic=restic, verify_repository=restic.verify_repository
    )
    service.problem_seen = None
    service._asking = asyncio.Lock()
    return service


def test_one_read_asks_restic_and_the_others_go_on_the_last_finding() -> None:
    async def main() -> None:
        restic = SlowRestic()
        service = service_over(restic)
        restic.opened.set()
        assert await service._repository_problem() is None  # the first ask
        restic.opened.clear()
        seen = service.problem_seen
        assert seen is not None
        service.problem_seen = (time.monotonic() - PROBLEM_READ_EVERY_S - 1, "password refused")
        asking = asyncio.create_task(service._repository_problem())
        await asyncio.sleep(0)  # it holds the lock, waiting on restic
        others = [asyncio.create_task(service._repository_problem()) for _ in range(5)]
        for _ in range(3):
            await asyncio.sleep(0)
        waiting = [task for task in others if not task.done()]
        restic.opened.set()
        assert await asking is None
        assert waiting == [], "status reads waited for another's repository open"
        assert [await task for task in others] == ["password refused"] * 5
        assert restic.asked == 2

    asyncio.run(main())


def test_the_reads_that_wait_for_the_first_ask_go_on_its_finding() -> None:
    """Before anything was found (the first status reads after the start), every read
    waiting for the first ask ran restic again once it was through, one after another: the
    last of them waited for all the repository opens before it."""

    async def main() -> None:
        restic = SlowRestic()
        service = service_over(restic)
        first = asyncio.create_task(service._repository_problem())
        await asyncio.sleep(0)  # it holds the lock, waiting on restic
        others = [asyncio.create_task(service._repository_problem()) for _ in range(5)]
        for _ in range(3):
            await asyncio.sleep(0)
        restic.opened.set()
        assert await first is None
        assert [await task for task in others] == [None] * 5
        assert restic.asked == 1

    asyncio.run(main())
