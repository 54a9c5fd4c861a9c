"""The snapshots a rollback may go back to: only those the live state grew from."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backup.index import SnapshotIndex
from backup.lineage import (
    RollbackMark,
    mark_from_restic,
    newest_on_line,
    record_rollback,
    stop_asked,
    unrecorded,
)
from backup.models import RollbackResult, Snapshot

T0 = datetime(2026, 12, 1, tzinfo=UTC)
BOTH = ("budgets", "conversations")


def at(minute: float) -> datetime:
    return T0 + timedelta(minutes=minute)


def snap(name: str, minute: float, components: Sequence[str] = BOTH) -> Snapshot:
    reason = "pre-rollback" if name.startswith("safety") else "manual"
    return Snapshot(name, name[:8], at(minute), tuple(components), reason, (f"reason:{reason}",))


def rollback(
    minute: float, restored: str, components: Sequence[str] = BOTH
) -> tuple[Snapshot, RollbackMark]:
    """A rollback at ``minute``: its safety snapshot then, its record just after the swap."""
    return snap(f"safety{minute:g}", minute, components), RollbackMark(
        at(minute + 0.5), restored, tuple(components)
    )


def newest(
    snapshots: list[Snapshot],
    marks: list[RollbackMark],
    minute: float,
    components: Sequence[str] = BOTH,
) -> str | None:
    ordered = sorted(snapshots, key=lambda s: s.time, reverse=True)
    found = newest_on_line(ordered, marks, at(minute), components)
    return found.id if found is not None else None


def test_without_rollbacks_the_newest_snapshot_before_the_moment() -> None:
    snapshots = [snap("a", 1), snap("b", 2), snap("c", 5)]
    assert newest(snapshots, [], 4) == "b"
    assert newest(snapshots, [], 1) is None


def test_the_snapshots_a_rollback_put_aside_are_passed_over_for_the_one_it_restored() -> None:
    safety, mark = rollback(3, "good")
    snapshots = [snap("good", 1), snap("bad", 2), safety]
    assert newest(snapshots, [mark], 10) == "good"
    assert newest([*snapshots, snap("after", 4)], [mark], 10) == "after"
    assert newest(snapshots, [mark], 3) == "bad"  # before the rollback, it was the live state
    # No record (a failed rollback leaves none): its safety snapshot is still passed over.
    assert newest(snapshots, [], 10) == "bad"


def test_a_snapshot_begun_before_the_swap_holds_the_state_put_aside() -> None:
    """Another replica's backup of the component, begun while the rollback ran (after its
    safety snapshot began, before its swap), dumped the old state."""
    safety, mark = rollback(3, "good")
    snapshots = [snap("good", 1), safety, snap("beside", 3.2)]
    assert newest(snapshots, [mark], 10) == "good"


def test_an_undo_brings_the_put_aside_line_back() -> None:
    safety1, first = rollback(3, "good")
    safety2, undo = rollback(5, "safety3")
    snapshots = [snap("good", 1), snap("bad", 2), safety1, snap("mid", 4), safety2]
    assert newest(snapshots, [first, undo], 10) == "safety3"
    # Forgotten since: nothing older is known to be the live state's.
    assert newest([s for s in snapshots if s.id != "safety3"], [first, undo], 10) is None


def test_a_chain_of_rollbacks_is_walked_back() -> None:
    safety1, first = rollback(4, "b")  # c put aside
    safety2, second = rollback(6, "a")  # b and d put aside
    snapshots = [snap("a", 1), snap("b", 2), snap("c", 3), safety1, snap("d", 5), safety2]
    marks = [first, second]
    assert newest(snapshots, marks, 10) == "a"
    assert newest(snapshots, marks, 6) == "d"
    assert newest(snapshots, marks, 5) == "b"


def test_a_rollback_of_one_component_leaves_the_others_line_alone() -> None:
    safety, mark = rollback(3, "good", ["budgets"])
    snapshots = [snap("good", 1), snap("bad", 2), safety]
    assert newest(snapshots, [mark], 10, ["conversations"]) == "bad"
    assert newest(snapshots, [mark], 10, ["budgets"]) == "good"
    assert newest(snapshots, [mark], 10, BOTH) == "good"  # bad's budgets were put aside


def test_a_record_naming_a_short_id_finds_its_snapshot() -> None:
    """A snapshot this process made on a remote repository is listed by its short id until
    restic's list is read; its rollback's record then names that id."""
    full = "0123abcd" + "e" * 56
    safety, mark = rollback(3, full[:8])
    assert newest([snap(full, 1), snap("bad", 2), safety], [mark], 10) == full


def test_a_record_is_read_back_from_restics_list() -> None:
    entry = {
        "time": "2026-12-01T00:03:30.123456789Z",
        "tags": ["ers-rollback", "restores:0123abcd", "rolled-back:budgets"],
    }
    mark = mark_from_restic(entry)
    assert mark == RollbackMark(mark.time if mark else at(0), "0123abcd", ("budgets",))
    assert mark is not None and mark.time.minute == 3
    assert mark_from_restic({"time": entry["time"], "tags": ["ers", "reason:manual"]}) is None


def test_a_record_added_while_the_list_was_read_stays() -> None:
    """A refresh whose `restic snapshots` ran before a rollback's record was written ends
    after it: its list lacks the record, which must not be dropped."""
    index = SnapshotIndex()
    safety, mark = rollback(3, "good")
    index.add_mark(mark)
    entries = [
        {
            "id": s.id,
            "time": s.time.isoformat(),
            "tags": [*s.tags, *(f"component:{c}" for c in s.components)],
        }
        for s in [snap("good", 1), snap("bad", 2), safety]
    ]
    index.replace(entries, [])
    found = index.newest_before(at(10), BOTH)
    assert found is not None and found.id == "good"


class SlowRecords:
    """Stands in for restic: a record takes ``seconds`` to write."""

    def __init__(self, seconds: float = 0.3) -> None:
        self.seconds = seconds
        self.written: list[list[str]] = []
        self.stopped = False
        self.started = asyncio.Event()

    async def backup_stdin(self, stdin: int, filename: str, **options: Any) -> dict[str, Any]:
        self.started.set()
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.stopped = True
            raise
        self.written.append(list(options["tags"]))
        return {"snapshot_id": "ab" * 32}


RESULT = RollbackResult("0123abcd" * 8, ("budgets",), "x", "safety")


async def told(restic: SlowRecords, stops: int) -> tuple[RollbackResult, bool]:
    """The result a rollback is told with when ``stops`` stops reach it during its record,
    and whether the stop is still asked for after."""

    async def run() -> tuple[RollbackResult, bool]:
        _, result = await record_rollback(restic, RESULT)  # type: ignore[arg-type]
        return result, stop_asked()

    task = asyncio.ensure_future(run())
    await restic.started.wait()
    for _ in range(stops):
        task.cancel()
        await asyncio.sleep(0.05)
    return await task


async def test_a_stop_while_the_record_is_written_waits_for_it_and_tells_the_rollback_done() -> (
    None
):
    """Raised on after the swap, the stop told callers the rollback had not happened (the
    route: "the live state as before it"); taken back for good, it let a PostgreSQL rollback
    go on to its other components."""
    restic = SlowRecords()
    result, asked = await told(restic, stops=1)
    assert result is RESULT and asked
    assert restic.written and "restores:" + "0123abcd" * 8 in restic.written[0]


async def test_a_second_stop_gives_the_record_up_and_stops_restic_first() -> None:
    restic = SlowRecords(seconds=30)
    result, asked = await told(restic, stops=2)
    assert asked and restic.stopped and not restic.written
    assert any("record in the repository was not written" in n for n in result.notes)


async def test_a_stop_after_a_postgresql_swap_committed_stays_asked_for() -> None:
    """Taken back (uncancelled), it let an automatic rollback go on to its next component."""
    from backup.pg_rollback import _interrupted_after_swap

    async def run() -> bool:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:  # psql on its way out, its COMMIT through
            _interrupted_after_swap("budgets")
        return stop_asked()

    assert await asyncio.ensure_future(run())


async def test_a_slow_word_of_the_swap_holds_the_record_back_no_longer_than_its_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: the trail's word of the swap was awaited before restic began the record, so
    a trail slower than the stop's bound lost the record to a single stop."""
    monkeypatch.setattr("backup.lineage.STOPPING_RECORD_S", 0.5)
    restic, said = SlowRecords(seconds=0.1), []

    async def slow_word(result: RollbackResult) -> None:
        await asyncio.sleep(1)  # a trail waiting for a lock
        said.append(result.snapshot_id)

    async def run() -> RollbackResult:
        return (await record_rollback(restic, RESULT, slow_word))[1]  # type: ignore[arg-type]

    task = asyncio.ensure_future(run())
    await asyncio.sleep(0.05)  # the word of the swap on its way
    task.cancel()
    result = await task
    assert restic.written, "the record was lost to one stop"
    assert not any("not written" in note for note in result.notes)


def test_a_swap_is_unrecorded_unless_a_record_of_it_stands_near_its_time() -> None:
    """A record stands for a swap when it restores the same snapshot (a short id either
    side), covers its components and was written within the record's bounds of it."""
    swap = RollbackMark(at(10), "aaaa1111bbbb", ("budgets",))
    near = RollbackMark(at(10.02), "aaaa1111", BOTH)  # the short id this process listed
    assert unrecorded([swap], [near]) == []
    other_snapshot = RollbackMark(at(10), "cccc2222", ("budgets",))
    other_component = RollbackMark(at(10), "aaaa1111bbbb", ("conversations",))
    long_before = RollbackMark(at(2), "aaaa1111bbbb", ("budgets",))  # an earlier rollback
    assert unrecorded([swap], [other_snapshot, other_component, long_before]) == [swap]
    assert unrecorded([swap], []) == [swap]


def test_a_record_stands_for_one_swap_the_nearest() -> None:
    """Rolled back to X, undone, and rolled back to X again within minutes: one record does
    not stand for both swaps."""
    first, again = (RollbackMark(at(m), "aaaa1111", ("budgets",)) for m in (10, 12))
    record = RollbackMark(at(12.01), "aaaa1111", ("budgets",))
    assert unrecorded([first, again], [record]) == [first]


def test_a_record_written_late_is_at_its_swaps_moment() -> None:
    entry = {
        "time": "2026-12-01T00:30:00.5+01:00",
        "tags": ["ers-rollback", "restores:aaaa1111", "rolled-back:budgets", "swapped-at:1.5"],
    }
    mark = mark_from_restic(entry)
    assert mark is not None and mark.time == datetime.fromtimestamp(1.5, UTC)
    entry["tags"][-1] = "swapped-at:not-a-number"  # a tag typed by hand: restic's time
    assert mark_from_restic(entry) == RollbackMark(
        at(-30) + timedelta(seconds=0.5), "aaaa1111", ("budgets",)
    )


def test_a_record_known_twice_stands_for_one_swap() -> None:
    """This process's copy and restic's, a moment apart: before, the spare copy stood for a
    second rollback to the same snapshot two minutes later, whose record was lost."""
    first, again = (RollbackMark(at(m), "aaaa1111", ("budgets",)) for m in (10, 12))
    copies = [
        RollbackMark(at(10) + timedelta(seconds=s), "aaaa1111", ("budgets",)) for s in (-0.2, 0.5)
    ]
    assert unrecorded([first, again], copies) == [again]
