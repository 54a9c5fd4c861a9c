from __future__ import annotations

from service.resilience.system_state import StateInputs, SystemState, SystemStateMachine


class World:
    def __init__(self) -> None:
        self.breakers = {
            "router": "closed",
            "nutrition": "closed",
            "workout": "closed",
            "budget": "closed",
        }
        self.incidents: dict[str, int] = {}
        self.failing: list[str] = []
        self.cooling: dict[str, float] = {}
        self.now = 1000.0

    def machine(self, recovery_clean_s: float = 60) -> SystemStateMachine:
        return SystemStateMachine(
            StateInputs(
                lambda: dict(self.breakers),
                lambda: dict(self.incidents),
                lambda: list(self.failing),
                lambda: dict(self.cooling),
            ),
            recovery_clean_s=recovery_clean_s,
            clock=lambda: self.now,
        )


def test_full_cycle_normal_degraded_emergency_recovery_normal() -> None:
    world = World()
    machine = world.machine()
    seen = []
    machine.subscribe(seen.append)
    assert machine.evaluate() is SystemState.NORMAL

    world.breakers["budget"] = "open"
    assert machine.evaluate() is SystemState.DEGRADED
    assert "budget" in machine.reason

    world.incidents = {"critical": 1}
    assert machine.evaluate() is SystemState.EMERGENCY

    world.incidents = {}
    world.breakers["budget"] = "closed"
    assert machine.evaluate() is SystemState.RECOVERY
    world.now += 59
    assert machine.evaluate() is SystemState.RECOVERY
    world.now += 1
    assert machine.evaluate() is SystemState.NORMAL
    assert [(t.from_state.value, t.to_state.value) for t in seen] == [
        ("normal", "degraded"),
        ("degraded", "emergency"),
        ("emergency", "recovery"),
        ("recovery", "normal"),
    ]


def test_most_agents_isolated_is_an_emergency() -> None:
    world = World()
    machine = world.machine()
    for name in ("nutrition", "workout", "budget"):
        world.breakers[name] = "forced_open"
    assert machine.evaluate() is SystemState.EMERGENCY
    assert "most agents isolated" in machine.reason


def test_high_incident_and_failing_subsystem_degrade() -> None:
    world = World()
    machine = world.machine()
    world.incidents = {"high": 2, "low": 3}
    assert machine.evaluate() is SystemState.DEGRADED
    world.incidents = {"low": 3}
    world.failing = ["backups"]
    assert machine.evaluate() is SystemState.DEGRADED
    assert "backups" in machine.reason


def test_relapse_during_recovery_goes_back() -> None:
    world = World()
    machine = world.machine()
    world.breakers["workout"] = "open"
    machine.evaluate()
    world.breakers["workout"] = "closed"
    assert machine.evaluate() is SystemState.RECOVERY
    world.breakers["workout"] = "open"
    assert machine.evaluate() is SystemState.DEGRADED
    world.breakers["workout"] = "closed"
    machine.evaluate()
    world.now += 30
    assert machine.evaluate() is SystemState.RECOVERY  # the clean time starts over


def test_an_agent_cooling_down_degrades_the_system_until_it_is_back() -> None:
    """While a rate limit's cooldown keeps every call from an agent, its fallbacks answer as
    for an open breaker; before, the state stayed normal while health said degraded."""
    world = World()
    machine = world.machine()
    world.cooling = {"workout": 600.0}
    assert machine.evaluate() is SystemState.DEGRADED
    assert machine.reason == "cooling down (rate limited): workout"
    # Isolated or cooling down, most agents are out: an emergency.
    world.breakers["budget"] = "forced_open"
    world.cooling = {"workout": 590.0, "nutrition": 30.0, "budget": 30.0}
    assert machine.evaluate() is SystemState.EMERGENCY
    assert machine.reason == (
        "most agents isolated: budget, nutrition (cooling down), workout (cooling down)"
    )
    world.breakers["budget"] = "closed"
    world.cooling = {}
    assert machine.evaluate() is SystemState.RECOVERY


def test_the_router_out_or_two_of_its_three_agents_out_is_an_emergency() -> None:
    """Before: the router counted as one agent among four, so with it isolated (every chat
    answered by a fallback), or two of the three agents it routes to, the state was only
    degraded."""
    world = World()
    machine = world.machine()
    world.breakers["router"] = "forced_open"
    assert machine.evaluate() is SystemState.EMERGENCY
    assert machine.reason == "the router is out, every chat answered by a fallback: router"

    world = World()
    machine = world.machine()
    world.breakers["nutrition"] = world.breakers["workout"] = "forced_open"
    assert machine.evaluate() is SystemState.EMERGENCY
    assert machine.reason == "most agents isolated: nutrition, workout"
    world.breakers["nutrition"] = "closed"
    assert machine.evaluate() is SystemState.DEGRADED  # one of three: degraded, as before


def test_a_failed_half_open_trial_leaves_the_state_where_it_was() -> None:
    world = World()
    machine = world.machine()
    seen = []
    machine.subscribe(seen.append)
    world.breakers["budget"] = "open"
    assert machine.evaluate() is SystemState.DEGRADED
    for _ in range(3):  # a trial each open duration, each failing
        world.breakers["budget"] = "half_open"
        assert machine.evaluate() is SystemState.DEGRADED
        assert machine.reason == "breaker open: budget (half-open)"
        world.breakers["budget"] = "open"
        assert machine.evaluate() is SystemState.DEGRADED
    # Before: degraded → recovery → degraded at each trial.
    assert [(t.from_state.value, t.to_state.value) for t in seen] == [("normal", "degraded")]
    world.breakers["budget"] = "closed"  # a trial that passed
    assert machine.evaluate() is SystemState.RECOVERY
    # The router half-open: every chat but its trials still answered by a fallback.
    world.breakers["router"] = "half_open"
    assert machine.evaluate() is SystemState.EMERGENCY
