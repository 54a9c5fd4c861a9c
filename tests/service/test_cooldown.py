"""An agent's cooldown as a kept switch: its record holds the wall-clock end, and a record
put back resumes only the time that is left."""

from __future__ import annotations

from service.resilience.cooldown import Cooldown


class Clocks:
    def __init__(self) -> None:
        self.monotonic = 100.0
        self.wall = 1_800_000_000.0

    def cooldown(self) -> Cooldown:
        return Cooldown("helper", clock=lambda: self.monotonic, wall_clock=lambda: self.wall)

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += seconds


def test_a_cooldown_is_recorded_with_its_wall_clock_end_and_says_each_change() -> None:
    clocks = Clocks()
    cooldown = clocks.cooldown()
    changes: list[dict[str, object] | None] = []
    cooldown.subscribe(lambda: changes.append(cooldown.record()))
    assert cooldown.record() is None

    cooldown.start(30)
    clocks.advance(10)
    assert cooldown.remaining() == 20
    assert cooldown.record() == {"agent": "helper", "until": clocks.wall + 20}
    assert cooldown.end() is True
    assert cooldown.end() is False  # nothing ran: no change to say
    assert changes == [{"agent": "helper", "until": 1_800_000_030.0}, None]


def test_a_kept_cooldown_resumes_what_is_left_and_an_elapsed_one_nothing() -> None:
    clocks = Clocks()
    kept = {"agent": "helper", "until": clocks.wall + 45}
    clocks.monotonic = 5.0  # another process: its own monotonic clock
    clocks.advance(15)

    resumed = clocks.cooldown()
    assert (
        resumed.resume(kept) == "agent 'helper' left alone for 30 s more (it asked: rate limited)"
    )
    assert resumed.remaining() == 30

    clocks.advance(31)
    late = clocks.cooldown()
    assert late.resume(kept) is None
    assert late.remaining() == 0


def test_follows_another_replicas_cooldown_and_its_end_but_not_its_own_yet_unstored() -> None:
    clocks = Clocks()
    cooldown = clocks.cooldown()
    asked = {"agent": "helper", "until": clocks.wall + 30}  # a 429 on another replica
    assert cooldown.follow(asked, settle_s=4) == (
        "agent 'helper' left alone for 30 s (it asked: rate limited)"
    )
    assert cooldown.remaining() == 30
    clocks.advance(5)
    assert cooldown.follow(asked, settle_s=4) is None  # the same end: nothing to change
    assert (
        cooldown.follow(None, settle_s=4) == "agent 'helper' takes calls again: its cooldown ended"
    )
    assert cooldown.remaining() == 0

    cooldown.start(60)  # this replica's own, not stored yet
    clocks.advance(1)
    assert cooldown.follow(None, settle_s=4) is None and cooldown.remaining() == 59
    clocks.advance(10)
    stale = {"agent": "helper", "until": clocks.wall - 1}
    assert (
        cooldown.follow(stale, settle_s=4) == "agent 'helper' takes calls again: its cooldown ended"
    )


def test_a_shorter_record_does_not_cut_a_longer_cooldown_running_here() -> None:
    """Last writer wins in the store: a replica that wrote its own shorter cooldown before
    it followed this one cut this one short, and the agent was called early."""
    clocks = Clocks()
    cooldown = clocks.cooldown()
    cooldown.start(120)
    clocks.advance(10)  # past the settle time
    assert cooldown.follow({"agent": "helper", "until": clocks.wall + 30}, settle_s=4) is None
    assert cooldown.remaining() == 110
