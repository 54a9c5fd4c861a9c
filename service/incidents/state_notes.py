"""System state changes noted on the timeline of the incident most likely behind them."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from service.incidents.service import IncidentService
from service.resilience.system_state import StateTransition

log = logging.getLogger("ers")


class StateNotes:
    """Notes each system state change on the timeline of the incident most likely behind
    it, one after another in the order they happened, on a thread of its own: a note is two
    round trips to the incident store, and the state machine runs on the event loop.

    ``close`` waits for the notes already taken; it must run before the store closes (a
    note written into a closing SQLite connection can crash the process).

    In a fleet each replica has a system state of its own and notes its changes on the
    shared timeline; ``replica`` names the one whose state changed."""

    def __init__(self, incidents: IncidentService, replica: str = "") -> None:
        self._incidents = incidents
        self._replica = replica
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ers-state-notes")

    def __call__(self, transition: StateTransition) -> None:
        try:
            self._pool.submit(_note_state_change, self._incidents, transition, self._replica)
        except RuntimeError:  # shutting down: the store is about to close
            log.info("the state change %s was not noted: shutting down", transition.to_state)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _note_state_change(
    incidents: IncidentService, transition: StateTransition, replica: str
) -> None:
    try:
        _write_state_change(incidents, transition, replica)
    except Exception as exc:  # the store may be down; the state has changed all the same
        log.warning("the state change %s could not be noted: %s", transition.to_state, exc)


def _write_state_change(
    incidents: IncidentService, transition: StateTransition, replica: str
) -> None:
    rank = {"critical": 0, "high": 1, "medium": 2, "low": 3}
    active, _ = incidents.store.list(status="active", limit=50)
    if not active:
        return
    cause = min(active, key=lambda i: (rank.get(i.severity, 4), -i.last_seen))
    where = f" on replica {replica}" if replica else ""
    details = {"from": transition.from_state.value, "to": transition.to_state.value}
    incidents.store.add_timeline(
        cause.id,
        "state_changed",
        f"system state{where} {transition.from_state} -> {transition.to_state}: "
        f"{transition.reason}",
        "ers",
        details | {"replica": replica} if replica else details,
    )
