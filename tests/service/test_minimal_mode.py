"""Minimal mode following the record the fleet keeps: another replica's start and end are
taken, a change made here stands until it is stored, and a record whose time is up is none."""

from __future__ import annotations

from service.chat.minimal_mode import MinimalMode


class Clocks:
    def __init__(self) -> None:
        self.now = 1000.0

    def mono(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + 1_700_000_000.0


def test_follows_another_replicas_start_and_end_but_not_a_change_of_its_own_yet_unstored() -> None:
    clocks = Clocks()
    mode = MinimalMode(clock=clocks.mono, wall_clock=clocks.wall)
    record = {"until": clocks.wall() + 120, "reason": "critical", "incident": "INC_1_ab12cd"}
    assert mode.follow(record, settle_s=4) is not None
    assert mode.active and mode.incident == "INC_1_ab12cd"
    clocks.now += 5
    assert mode.follow(record, settle_s=4) is None  # the same moment: nothing to change
    assert mode.follow(None, settle_s=4) == "ended"  # ended on another replica
    assert not mode.active

    mode.enter(60, "here", "INC_2_ab12cd")  # this replica's own, not stored yet
    clocks.now += 1
    assert mode.follow(None, settle_s=4) is None and mode.active
    clocks.now += 10
    stale = {"until": clocks.wall() - 1, "reason": "old", "incident": None}
    assert mode.follow(stale, settle_s=4) is None and mode.incident == "INC_2_ab12cd"
    assert mode.follow(None, settle_s=4) == "ended"
