"""At start, the trials resolved isolate alerts left incidents to are asked again, then lost
resolutions are replayed every minute. A database that does not answer the first look must
not end the replays for the life of the process."""

from __future__ import annotations

import asyncio
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
from service.incidents.rewatch import rewatch_trials
from service.incidents.store import IncidentStore
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

    responder: Any = SimpleNamespace(team=None)
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
        waiting = await rewatch_trials(ledger, store, IncidentRecovery(store, Meters()), team)
        assert waiting == 1
        assert store.get(left.id).status == "resolved"
        assert store.get(reopened.id).status == "mitigated"
    finally:
        store.close()
