"""At start, the trials resolved isolate alerts left incidents to are asked again, then lost
resolutions are replayed every minute. A database that does not answer the first look must
not end the replays for the life of the process, nor leave the trials unasked."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from service.incidents.alert_payload import Alert
from service.incidents.alert_webhook import AlertHandler
from service.incidents.ledger import AlertLedger, LedgerUnavailable
from service.incidents.model import IncidentStoreUnavailable
from service.incidents.recovery import MITIGATED, IncidentRecovery
from service.incidents.rewatch import Rewatch
from service.incidents.store import IncidentStore
from service.resilience.breaker import CircuitBreaker
from telemetry.classifier import load_rules
from telemetry.span_record import SpanRecord
from tests.e2e.test_fleet_overrides import alert_payload
from tests.telemetry.conftest import error_record


class Meters:
    def opened(self, incident: Any) -> None:
        pass

    def observe_recovery(self, incident: Any) -> None:
        pass


@pytest.mark.parametrize("read", ["ledger", "incident"])
async def test_a_database_away_at_start_does_not_end_the_replays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    """Away for the ledger's look, or for the incident's read just after it."""
    store = IncidentStore(tmp_path / "incidents.sqlite3")
    ledger = AlertLedger(store.database)
    away = IncidentStoreUnavailable("the database at db:5432 does not answer")
    if read == "ledger":
        rows = store.database.rows

        def away_once(sql: str, params: Any = ()) -> Any:
            monkeypatch.setattr(store.database, "rows", rows)  # back for the replays
            raise away

        monkeypatch.setattr(store.database, "rows", away_once)
        with pytest.raises(LedgerUnavailable, match="does not answer"):
            ledger.left_to_trials("incident mitigated")
        monkeypatch.setattr(store.database, "rows", away_once)
    else:
        resolved = alert_payload("resolved")["alerts"][0]
        left = [(Alert.model_validate(resolved).model_dump_json(), "INC_1_abcdef")]
        monkeypatch.setattr(ledger, "left_to_trials", lambda ending: left)

        def get(incident_id: str) -> Any:
            raise away

        monkeypatch.setattr(store, "get", get)

    responder: Any = SimpleNamespace(team=SimpleNamespace(guards={}))
    handler = AlertHandler(ledger, store, responder, Meters())
    replayed = asyncio.Event()

    async def replay_lost() -> int:
        replayed.set()
        return 0

    monkeypatch.setattr(handler, "replay_lost", replay_lost)
    replays = asyncio.create_task(handler.run_replays(every_s=3600))
    waiting = asyncio.create_task(replayed.wait())
    try:
        await asyncio.wait([replays, waiting], return_when=asyncio.FIRST_COMPLETED)
        assert not replays.done(), replays.exception()
        assert replayed.is_set()
    finally:
        replays.cancel()
        waiting.cancel()
        await asyncio.gather(replays, waiting, return_exceptions=True)
        store.close()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_only_an_incident_the_resolution_left_mitigated_is_resolved_by_a_restart(
    tmp_path: Path,
) -> None:
    """An incident a trial resolved, reopened by new failures and mitigated since by an
    operator (or the responder) is theirs: the old resolution's trial does not end it."""
    default_classifier = load_rules()
    clock = Clock(time.time() - 3600)
    store = IncidentStore(tmp_path / "incidents.sqlite3", clock=clock)
    ledger = AlertLedger(store.database)
    record = error_record("agent.workout", message="left to a trial")
    left, _ = store.record_error(record, default_classifier.classify(record))
    record = error_record("agent.workout", "TimeoutError", "reopened since")
    reopened, _ = store.record_error(record, default_classifier.classify(record))
    resolved = alert_payload("resolved")["alerts"][0]
    for n, incident in enumerate((left, reopened)):
        key = (f"{n}5e0f1c9a2b3d4e5f", resolved["startsAt"], "resolved")
        alert = Alert.model_validate({**resolved, "fingerprint": key[0]})
        assert ledger.record(*key, alert.name, alert.model_dump_json())
        store.mitigate(incident.id, "alertmanager")
        ledger.finish(*key, incident.id, f"probe failed; {MITIGATED}")
    clock.now = time.time() + 60  # the trial resolved it, then the failures came back
    store.resolve(reopened.id, "breaker:workout")
    late = int(clock.now * 1e9)
    record = SpanRecord.from_dict({**record.to_dict(), "startNs": late, "endNs": late + 1})
    assert store.record_error(record, default_classifier.classify(record))[1] == "reopened"
    store.mitigate(reopened.id, "operator", "a workaround holds it")

    async def probe() -> Any:
        return SimpleNamespace(error=None)

    closed = SimpleNamespace(state=SimpleNamespace(value="closed"))
    guard = SimpleNamespace(name="workout", breaker=closed, probe=probe)
    team: Any = SimpleNamespace(get=lambda name: guard)
    try:
        waiting = await Rewatch(ledger, store, IncidentRecovery(store, Meters()), team).trials()
        assert waiting == 1
        assert store.get(left.id).status == "resolved"
        assert store.get(reopened.id).status == "mitigated"
    finally:
        store.close()


def left_to_a_trial(
    store: IncidentStore, ledger: AlertLedger, message: str, n: int = 0
) -> tuple[str, Alert]:
    """An incident of the workout agent a resolved isolate alert left mitigated."""
    record = error_record("agent.workout", f"E{n}", message)
    incident, _ = store.record_error(record, load_rules().classify(record))
    resolved = alert_payload("resolved")["alerts"][0]
    alert = Alert.model_validate({**resolved, "fingerprint": f"{n}5e0f1c9a2b3d4e5f"})
    key = (alert.fingerprint, resolved["startsAt"], "resolved")
    assert ledger.record(*key, alert.name, alert.model_dump_json())
    store.mitigate(incident.id, "alertmanager")
    ledger.finish(*key, incident.id, f"probe failed; {MITIGATED}")
    return incident.id, alert


def a_team(probe_error: str | None, probes: list[str]) -> Any:
    async def probe() -> Any:
        probes.append("asked")
        return SimpleNamespace(error=probe_error)

    guard = SimpleNamespace(name="workout", breaker=CircuitBreaker("workout"), probe=probe)
    return SimpleNamespace(get=lambda name: guard)


async def test_an_incident_isolated_again_since_its_resolution_is_left_to_that_firing(
    tmp_path: Path,
) -> None:
    """Before: the watch the new firing ended was armed again, and the incident resolved by
    the next trial while that alert still fired."""
    store = IncidentStore(tmp_path / "incidents.sqlite3")
    ledger = AlertLedger(store.database)
    incident_id, alert = left_to_a_trial(store, ledger, "left to a trial")
    time.sleep(0.01)  # the firing is received after the resolution
    firing = alert_payload("firing")["alerts"][0]
    again = Alert.model_validate({**firing, "startsAt": "2030-01-01T00:00:00Z"})
    assert (again.action, again.target) == ("isolate", alert.target)
    key = (again.fingerprint, "2030-01-01T00:00:00Z", "firing")
    assert ledger.record(*key, again.name, again.model_dump_json())
    ledger.finish(*key, incident_id, "isolate: success")
    probes: list[str] = []
    try:
        recovery = IncidentRecovery(store, Meters())
        waiting = await Rewatch(ledger, store, recovery, a_team(None, probes)).trials()
        assert (waiting, probes) == (0, [])
        assert store.get(incident_id).status == "mitigated"
    finally:
        store.close()


async def test_a_pass_a_database_outage_cut_short_is_tried_again_at_the_next_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: one look at start; the ledger away for it, or the second incident's read,
    and the trials were never asked. An incident handled before the outage is not asked
    twice."""
    store = IncidentStore(tmp_path / "incidents.sqlite3")
    ledger = AlertLedger(store.database)
    first, _ = left_to_a_trial(store, ledger, "first left", 1)
    time.sleep(0.01)
    second, _ = left_to_a_trial(store, ledger, "second left", 2)
    probes: list[str] = []
    rewatch = Rewatch(ledger, store, IncidentRecovery(store, Meters()), a_team("503", probes))
    away = IncidentStoreUnavailable("the database at db:5432 does not answer")
    left_to_trials, get = ledger.left_to_trials, store.get

    def ledger_away(ending: str) -> Any:
        raise LedgerUnavailable(f"the alert ledger could not be read: {away}")

    def second_away(incident_id: str) -> Any:
        if incident_id == second:
            raise away
        return get(incident_id)

    try:
        monkeypatch.setattr(ledger, "left_to_trials", ledger_away)
        await rewatch.until_done()
        assert (rewatch.finished, probes) == (False, [])
        monkeypatch.setattr(ledger, "left_to_trials", left_to_trials)
        monkeypatch.setattr(store, "get", second_away)
        await rewatch.until_done()
        assert (rewatch.finished, probes) == (False, ["asked"])
        monkeypatch.setattr(store, "get", get)
        await rewatch.until_done()
        await rewatch.until_done()
        assert (rewatch.finished, probes) == (True, ["asked", "asked"])
        for incident_id in (first, second):
            notes = [e for e in store.timeline(incident_id) if "ERS restarted" in e.message]
            assert len(notes) == 1, notes
            assert store.get(incident_id).status == "mitigated"
    finally:
        store.close()


async def test_two_incidents_waiting_on_one_agent_leave_the_watch_to_the_newest(
    tmp_path: Path,
) -> None:
    """A breaker has one watch, which the newest resolution held before the stop; asked
    newest first, the oldest took it over."""
    store = IncidentStore(tmp_path / "incidents.sqlite3")
    ledger = AlertLedger(store.database)
    older, _ = left_to_a_trial(store, ledger, "older", 1)
    time.sleep(0.01)
    newer, _ = left_to_a_trial(store, ledger, "newer", 2)
    team = a_team("503", [])
    recovery = IncidentRecovery(store, Meters())
    try:
        assert await Rewatch(ledger, store, recovery, team).trials() == 2
        breaker = team.get("workout").breaker
        breaker.force_open("down", source="operator")
        breaker.reset(force=True, source="operator")
        await recovery.drain()
        assert (store.get(older).status, store.get(newer).status) == ("mitigated", "resolved")
    finally:
        store.close()


async def test_a_resolution_handled_since_the_start_is_left_to_the_running_handler(
    tmp_path: Path,
) -> None:
    """A pass tried again after a database outage found the resolutions handled since the
    start too, asked the agent again and noted a restart that never came."""
    store = IncidentStore(tmp_path / "incidents.sqlite3")
    ledger = AlertLedger(store.database)
    probes: list[str] = []
    rewatch = Rewatch(ledger, store, IncidentRecovery(store, Meters()), a_team(None, probes))
    time.sleep(0.01)
    incident_id, _ = left_to_a_trial(store, ledger, "since the start")
    try:
        assert (await rewatch.trials(), probes) == (0, [])
        assert store.get(incident_id).status == "mitigated"
    finally:
        store.close()


async def test_a_resolution_row_that_no_longer_reads_as_an_alert_is_skipped_not_the_end(
    tmp_path: Path,
) -> None:
    """Before: the row's ValidationError ended the pass as "not the database", and every
    incident after it stayed mitigated until its quiet period."""
    store = IncidentStore(tmp_path / "incidents.sqlite3")
    ledger = AlertLedger(store.database)
    older, _ = left_to_a_trial(store, ledger, "older", 1)
    time.sleep(0.01)
    newer, _ = left_to_a_trial(store, ledger, "newer", 2)
    with sqlite3.connect(tmp_path / "incidents.sqlite3") as db:
        db.execute("UPDATE alert_ledger SET alert = '{\"old\": 1}' WHERE incident_id = ?", (older,))
    probes: list[str] = []
    rewatch = Rewatch(ledger, store, IncidentRecovery(store, Meters()), a_team(None, probes))
    try:
        await rewatch.until_done()
        assert (rewatch.finished, probes) == (True, ["asked"])
        assert (store.get(older).status, store.get(newer).status) == ("mitigated", "resolved")
    finally:
        store.close()
