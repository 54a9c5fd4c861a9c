"""System state changes go on the timeline of the incident behind them, and nowhere else."""

from __future__ import annotations

from pathlib import Path

from service.incidents.state_notes import StateNotes
from service.incidents.store import IncidentStore
from telemetry.classifier import load_rules
from tests.service.test_system_state import World
from tests.telemetry.conftest import error_record


def test_a_state_change_is_noted_where_its_cause_is_and_nowhere_else(tmp_path: Path) -> None:
    classifier = load_rules()
    store = IncidentStore(tmp_path / "incidents.sqlite3")
    incidents = {}
    for agent, exception, message in (
        ("budget", "SimulatedDatabaseError", "Database connection timeout"),  # high
        ("workout", "SimulatedNetworkError", "ECONNRESET"),  # medium
        ("nutrition", "ValidationError", "bad plan"),  # low
    ):
        record = error_record(f"agent.{agent}", exception, message, attributes={"ers.agent": agent})
        incidents[agent], _ = store.record_error(record, classifier.classify(record))
    assert [incidents[a].severity for a in ("budget", "workout", "nutrition")] == [
        "high",
        "medium",
        "low",
    ]
    world = World()
    machine = world.machine(recovery_clean_s=60)
    notes = StateNotes(store, replica="r1")
    machine.subscribe(notes)

    world.breakers["workout"] = "open"  # degraded by workout's breaker, not by budget's incident
    machine.evaluate()
    world.breakers["workout"] = "closed"
    machine.evaluate()  # recovery: where the trouble it ends was noted
    world.now += 60
    machine.evaluate()  # normal
    world.failing = ["disk"]  # no incident is behind it: noted nowhere
    machine.evaluate()
    world.failing = []
    machine.evaluate()
    world.incidents = {"high": 1}  # the high-severity incident is behind it
    machine.evaluate()
    notes.close()

    def noted(agent: str) -> list[str]:
        timeline = store.timeline(incidents[agent].id)
        return [e.message for e in timeline if e.kind == "state_changed"]

    assert noted("workout") == [
        "system state on replica r1 normal -> degraded: breaker open: workout",
        "system state on replica r1 degraded -> recovery: conditions cleared; watching for relapse",
        "system state on replica r1 recovery -> normal: clean for 60 s",
    ]
    assert noted("budget") == [
        "system state on replica r1 recovery -> degraded: 1 high-severity incident(s) active"
    ]
    assert noted("nutrition") == []
    assert [(t.from_state, t.to_state) for t in machine.history][3:5] == [
        ("normal", "degraded"),
        ("degraded", "recovery"),
    ]
    store.close()


def test_the_incident_behind_a_change_is_found_among_many_newer_ones(tmp_path: Path) -> None:
    """A high incident seen before 60 lesser ones, and a medium one of the agent whose breaker
    opens seen before 60 of other components: each change is still noted on its own cause."""
    classifier = load_rules()
    store = IncidentStore(tmp_path / "incidents.sqlite3")
    budget = error_record(
        "agent.budget",
        "SimulatedDatabaseError",
        "Database connection timeout",
        attributes={"ers.agent": "budget"},
    )
    high, _ = store.record_error(budget, classifier.classify(budget))
    workout = error_record(
        "agent.workout", "SimulatedNetworkError", "ECONNRESET", attributes={"ers.agent": "workout"}
    )
    medium, _ = store.record_error(workout, classifier.classify(workout))
    for n in range(60):  # newer, lesser, and of other components
        other = error_record(f"agent.other{n}", "ValidationError", f"bad plan {'x' * n}")
        store.record_error(other, classifier.classify(other))
    assert (high.severity, medium.severity) == ("high", "medium")
    world = World()
    machine = world.machine()
    notes = StateNotes(store)
    machine.subscribe(notes)
    world.breakers["workout"] = "open"
    machine.evaluate()
    world.breakers["workout"] = "closed"
    machine.evaluate()  # recovery
    world.incidents = {"high": 1}
    machine.evaluate()
    notes.close()

    def noted(incident_id: str) -> list[str]:
        return [e.message for e in store.timeline(incident_id) if e.kind == "state_changed"]

    assert noted(medium.id) == [
        "system state normal -> degraded: breaker open: workout",
        "system state degraded -> recovery: conditions cleared; watching for relapse",
    ]
    assert noted(high.id) == [
        "system state recovery -> degraded: 1 high-severity incident(s) active"
    ]
    store.close()
