"""System state changes noted on the timeline of the incident behind them."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from service.incidents.store import IncidentStore
from service.resilience.system_state import StateTransition, SystemState

log = logging.getLogger("ers")


class StateNotes:
    """Notes each system state change on the timeline of the incident behind it, one after
    another in the order they happened, on a thread of its own: a note is two round trips
    to the incident store, and the state machine runs on the event loop.

    The incident behind a change is the latest active one of the severity that called for
    the new state, else of the agent or subsystem that did (an open breaker, a cooldown, a
    failing check). A recovery, and the normal state after it, go where the trouble they
    end was noted. A change no incident is behind is noted nowhere (the log has it, and
    the status its reason): on another incident's timeline it would tell a false story.

    ``close`` waits for the notes already taken; it must run before the store closes (a
    note written into a closing SQLite connection can crash the process).

    In a fleet each replica has a system state of its own and notes its changes on the
    shared timeline; ``replica`` names the one whose state changed."""

    def __init__(self, incidents: IncidentStore, replica: str = "") -> None:
        self._incidents = incidents
        self._replica = replica
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ers-state-notes")
        self._trouble: str | None = None  # where the last change into trouble was noted

    def __call__(self, transition: StateTransition) -> None:
        try:
            self._pool.submit(self._note, transition)
        except RuntimeError:  # shutting down: the store is about to close
            log.info("the state change %s was not noted: shutting down", transition.to_state)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _note(self, transition: StateTransition) -> None:
        """On the notes' thread, one at a time."""
        try:
            incident_id = self._behind(transition)
            if incident_id is not None:
                self._write(incident_id, transition)
        except Exception as exc:  # the store may be down; the state has changed all the same
            log.warning("the state change %s could not be noted: %s", transition.to_state, exc)

    def _behind(self, transition: StateTransition) -> str | None:
        if transition.to_state in (SystemState.RECOVERY, SystemState.NORMAL):
            return self._trouble
        if transition.severity is not None:
            newest, _ = self._incidents.list(status="active", severity=transition.severity, limit=1)
            cause = newest[0] if newest else None
        elif transition.components:
            cause = self._incidents.most_severe_active(component=sorted(transition.components))
        else:
            cause = None
        self._trouble = cause.id if cause is not None else None
        return self._trouble

    def _write(self, incident_id: str, transition: StateTransition) -> None:
        replica = self._replica
        where = f" on replica {replica}" if replica else ""
        details = {"from": transition.from_state.value, "to": transition.to_state.value}
        self._incidents.add_timeline(
            incident_id,
            "state_changed",
            f"system state{where} {transition.from_state} -> {transition.to_state}: "
            f"{transition.reason}",
            "ers",
            details | {"replica": replica} if replica else details,
        )
