"""The status's live size: a read that hangs (a frozen database server) holds up the read
alone; a status shows the last size known at once, and waits a second at most for the
first read."""

from __future__ import annotations

import asyncio

from backup import BackupError
from service.backups import live_size
from service.backups.live_size import LiveSize
from service.backups.replies import human_size


async def test_a_hung_read_never_holds_the_status_up(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(live_size, "READ_EVERY_S", 0.0)
    release = asyncio.Event()
    reads = []

    async def read() -> dict[str, int]:
        reads.append(1)
        if len(reads) > 1:
            await release.wait()  # the server froze
        return {"budgets": 100 * len(reads), "profiles": 20}

    size = LiveSize(read)
    assert await size.get() == 120
    statuses = [asyncio.ensure_future(size.get()) for _ in range(5)]
    await asyncio.sleep(0)
    # Answered without waiting for the hung read (before: a second each, in a status).
    assert all(status.done() for status in statuses)
    assert [status.result() for status in statuses] == [120] * 5  # the last size known
    await asyncio.sleep(0)
    assert len(reads) == 2  # one read at a time, shared
    release.set()
    for _ in range(5):  # the read that hung ends
        await asyncio.sleep(0)
    assert await size.get() == 220  # what the read that hung found, once the server is back


async def test_the_first_read_is_waited_for_a_while(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(live_size, "WAIT_S", 0.05)

    async def hung() -> dict[str, int]:
        await asyncio.Event().wait()
        return {}

    size = LiveSize(hung)
    assert await size.get() == "not read within 0.05 s"
    # A replica started while the server hangs: each status waited the whole wait again.
    statuses = [asyncio.ensure_future(size.get()) for _ in range(3)]
    await asyncio.sleep(0)
    assert all(status.done() for status in statuses)
    assert {status.result() for status in statuses} == {"not read within 0.05 s"}


async def test_a_size_that_cannot_be_read_says_why() -> None:
    async def read() -> dict[str, int]:
        raise BackupError("reading the schemas' sizes failed: connection refused")

    assert await LiveSize(read).get() == "reading the schemas' sizes failed: connection refused"


def test_the_live_size_is_told_in_the_units_it_names() -> None:
    # Before: divided by 1024 and called KB, MB, GB: a 205.7 MB file read "196.2 MB".
    assert human_size(205_713_408) == "205.7 MB"
    assert human_size(102_400) == "102.4 KB"
    assert human_size(2_400_000_000) == "2.4 GB"
    assert human_size(999) == "999 B"
    assert human_size(1000) == "1.0 KB"
