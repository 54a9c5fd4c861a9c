"""At start, the trials resolved isolate alerts left incidents to are asked again, then lost
resolutions are replayed every minute. A database that does not answer the first look must
not end the replays for the life of the process."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from service.incidents.alert_payload import Alert
from service.incidents.alert_webhook import AlertHandler
from service.incidents.ledger import AlertLedger, LedgerUnavailable
from service.incidents.model import IncidentStoreUnavailable
from service.incidents.store import IncidentStore
from tests.e2e.test_fleet_overrides import alert_payload


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
