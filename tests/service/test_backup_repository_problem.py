"""What the status reads of the repository's problem: restic (a repository open, about half
a second of key derivation) is asked by one ask at a time in the background, however many
reads arrive, and no read but the very first waits for it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import SimpleNamespace

from backup.errors import WrongPassword
from service.backups.repository_look import PROBLEM_READ_EVERY_S, RepositoryLook


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


def manager_over(restic: SlowRestic) -> SimpleNamespace:
    return SimpleNamespace(restic=restic, verify_repository=restic.verify_repository)


def test_one_ask_runs_restic_and_every_read_goes_on_the_last_finding() -> None:
    async def main() -> None:
        restic = SlowRestic()
        manager, look = manager_over(restic), RepositoryLook()
        restic.opened.set()
        assert await look.problem(manager) is None  # the first ask
        restic.opened.clear()
        assert look.seen is not None
        look.seen = (time.monotonic() - PROBLEM_READ_EVERY_S - 1, "password refused")
        reads = [asyncio.create_task(look.problem(manager)) for _ in range(6)]
        for _ in range(3):
            await asyncio.sleep(0)
        waiting = [task for task in reads if not task.done()]
        assert waiting == [], "status reads waited for the repository open"
        assert [await task for task in reads] == ["password refused"] * 6
        assert restic.asked == 2  # the ask is under way, one for all six
        restic.opened.set()
        for _ in range(3):
            await asyncio.sleep(0)
        assert await look.problem(manager) is None  # its finding, once through
        assert restic.asked == 2

    asyncio.run(main())


def test_the_reads_that_wait_for_the_first_ask_go_on_its_finding() -> None:
    """Before anything was found (the first status reads after the start), every read
    waiting for the first ask ran restic again once it was through, one after another: the
    last of them waited for all the repository opens before it."""

    async def main() -> None:
        restic = SlowRestic()
        manager, look = manager_over(restic), RepositoryLook()
        first = asyncio.create_task(look.problem(manager))
        await asyncio.sleep(0)  # its ask waits on restic
        others = [asyncio.create_task(look.problem(manager)) for _ in range(5)]
        for _ in range(3):
            await asyncio.sleep(0)
        restic.opened.set()
        assert await first is None
        assert [await task for task in others] == [None] * 5
        assert restic.asked == 1

    asyncio.run(main())


def test_an_ask_does_not_write_over_a_newer_finding_of_the_check() -> None:
    async def main() -> None:
        restic = SlowRestic()
        manager, look = manager_over(restic), RepositoryLook()
        look.seen = (time.monotonic() - PROBLEM_READ_EVERY_S - 1, None)
        assert await look.problem(manager) is None  # starts the ask
        await asyncio.sleep(0)
        look.seen = (time.monotonic(), "password refused")  # the check, meanwhile
        restic.opened.set()
        for _ in range(3):
            await asyncio.sleep(0)
        assert await look.problem(manager) == "password refused"

    asyncio.run(main())


def test_an_ask_that_fails_unforeseen_is_a_finding_and_the_next_ask_still_runs() -> None:
    """Before: the first status read raised it (a 500), and every later ask's failure was
    left unread while the status went on the finding before."""

    class Failing(SlowRestic):
        async def verify_repository(self, *, thorough: bool = False) -> str:
            self.asked += 1
            raise PermissionError(13, "Permission denied")

    async def main() -> None:
        restic = Failing()
        manager, look = manager_over(restic), RepositoryLook()
        problem = await look.problem(manager)
        assert problem == ("the repository could not be looked at (PermissionError): see ERS's log")
        assert look.seen is not None and look.seen[1] == problem
        look.seen = (time.monotonic() - PROBLEM_READ_EVERY_S - 1, None)
        assert await look.problem(manager) is None  # the last finding, while it asks
        for _ in range(3):
            await asyncio.sleep(0)
        assert restic.asked == 2
        assert await look.problem(manager) == problem

    asyncio.run(main())


class PasswordRestic(SlowRestic):
    """Refuses the password its opens that began while ``wrong`` held."""

    def __init__(self) -> None:
        super().__init__()
        self.wrong = False
        self.refused = asyncio.Event()  # when an open begun with the wrong password ends

    async def verify_repository(self, *, thorough: bool = False) -> str:
        if self.wrong:
            self.asked += 1
            await self.refused.wait()
            raise WrongPassword("the password in 'pw' does not open the repository")
        return await super().verify_repository(thorough=thorough)


def test_a_backups_own_word_on_the_repository_is_the_status_at_once() -> None:
    """Before: a backup refused for a wrong password beside a status of 31 backups, and
    one done with the password put back beside "unavailable", each for up to 10 s."""

    async def main() -> None:
        restic = PasswordRestic()
        manager, look = manager_over(restic), RepositoryLook()
        restic.opened.set()
        assert await look.problem(manager) is None
        refused = "the password in 'pw' does not open the repository"
        with contextlib.suppress(WrongPassword), look.watching():
            raise WrongPassword(refused)
        assert await look.problem(manager) == refused  # no new ask: its word
        assert restic.asked == 1

        restic.opened.clear()
        restic.wrong = True
        stale = asyncio.create_task(look._ask(manager))  # begun before the password is back
        await asyncio.sleep(0)
        restic.wrong = False
        with look.watching():
            pass  # a backup done: the password put back
        restic.refused.set()
        assert await stale == refused  # the older ask ends first: its word is not taken
        reading = asyncio.create_task(look.problem(manager))
        await asyncio.sleep(0)
        assert not reading.done()  # it asks restic again rather than tell the old word
        restic.opened.set()
        assert await reading is None

    asyncio.run(main())
