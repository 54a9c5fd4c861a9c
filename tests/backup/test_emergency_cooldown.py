"""The emergency-backup cooldown is kept as a wall-clock end: put back in a new process it
answers with the same backup until that moment, and not after."""

from __future__ import annotations

from datetime import UTC, datetime

from backup.emergency import EmergencyCooldown
from backup.models import BackupResult


class Clocks:
    def __init__(self) -> None:
        self.monotonic = 100.0
        self.wall = 1_800_000_000.0

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += seconds


def emergency_backup(made: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> BackupResult:
    return BackupResult(
        snapshot_id="1a2b3c4d",
        reason="emergency",
        components=("budgets", "profiles"),
        skipped=(),
        started_at=datetime(2026, 12, 3, 7, 30, tzinfo=UTC),
        duration_seconds=1.5,
        made=made,
    )


def cooldown(clocks: Clocks, seconds: float = 300) -> EmergencyCooldown:
    return EmergencyCooldown(seconds, lambda: clocks.monotonic, lambda: clocks.wall)


def test_a_kept_cooldown_answers_with_the_same_backup_until_its_end_in_a_new_process() -> None:
    clocks = Clocks()
    before = cooldown(clocks)
    changes: list[dict | None] = []
    before.subscribe(lambda: changes.append(before.record()))
    before.started(emergency_backup())
    assert changes and changes[-1] is not None
    record = changes[-1]
    assert record["until"] == clocks.wall + 300

    clocks.advance(100)
    clocks.monotonic = 5.0  # a new process: its monotonic clock starts over
    after = cooldown(clocks)
    assert after.coalesced() is None
    words = after.resume(record)
    assert words is not None and "200 s more" in words and "1a2b3c4d" in words
    coalesced = after.coalesced()
    assert coalesced is not None and coalesced.coalesced
    assert coalesced.snapshot_id == "1a2b3c4d"
    assert coalesced.components == ("budgets", "profiles")
    assert coalesced.started_at == emergency_backup().started_at

    clocks.advance(199)
    assert after.coalesced() is not None
    clocks.advance(1)
    assert after.coalesced() is None and after.record() is None


def test_a_cooldown_that_ended_while_down_is_not_put_back() -> None:
    clocks = Clocks()
    before = cooldown(clocks, seconds=10)
    before.started(emergency_backup())
    record = before.record()
    assert record is not None
    clocks.advance(10)
    after = cooldown(clocks, seconds=10)
    assert after.resume(record) is None
    assert after.coalesced() is None


def test_a_lowered_setting_shortens_a_kept_cooldown() -> None:
    clocks = Clocks()
    before = cooldown(clocks, seconds=600)
    before.started(emergency_backup())
    record = before.record()
    assert record is not None
    after = cooldown(clocks, seconds=60)
    after.resume(record)
    assert after.remaining() == 60

    # The record kept stays the one written before (a resume writes none). Before: each
    # start put back the lowered length from that start, until the old end.
    clocks.advance(40)
    again = cooldown(clocks, seconds=60)
    assert again.resume(record) is not None and again.remaining() == 20
    clocks.advance(20)
    assert cooldown(clocks, seconds=60).resume(record) is None


def test_the_snapshots_of_a_backup_on_postgresql_are_kept_each_with_its_component() -> None:
    clocks = Clocks()
    made = (("1a2b3c4d", ("budgets",)), ("5e6f7a8b", ("profiles",)))
    before = cooldown(clocks)
    before.started(emergency_backup(made))
    after = cooldown(clocks)
    record = before.record()
    assert record is not None
    after.resume(record)
    coalesced = after.coalesced()
    assert coalesced is not None and coalesced.snapshots == made
