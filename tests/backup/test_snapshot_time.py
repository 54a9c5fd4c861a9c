"""The time a new snapshot is kept at: whole seconds (restic's --time), never before the
moment its copy began."""

from __future__ import annotations

from datetime import UTC, datetime

from backup.restic import _time_args, snapshot_time


def test_a_snapshot_is_never_kept_at_a_time_before_it_began() -> None:
    """Rounded down, an emergency backup taken in the second an incident began counted as a
    snapshot from before the incident: a rollback to before it restored the broken state."""
    for _ in range(1000):
        began = datetime.now(UTC)
        kept = snapshot_time()
        assert kept >= began and kept.microsecond == 0
        assert (kept - began).total_seconds() <= 1


def test_restic_gets_the_time_in_utc_to_the_second() -> None:
    assert _time_args(datetime(2026, 12, 4, 9, 5, 7, tzinfo=UTC)) == [
        "--time",
        "2026-12-04 09:05:07",
    ]
    assert _time_args(None) == []
