"""``GET /api/emergency/incidents?since=`` reads a time without an offset as UTC, as every
time ERS shows is (`ers incidents list` prints `02:53:17Z`). It used to read it in the
server's local time zone: on a server set to Honolulu, `since=` one hour ago in UTC left out
the incident seen a moment ago, and on one set to Kiritimati `since=` one hour ahead kept it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI


def _alert() -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="DiskSlow"}',
        "status": "firing",
        "receiver": "people",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "DiskSlow", "severity": "warning"},
                "annotations": {"summary": "disk slow"},
                "startsAt": datetime.now(UTC).isoformat(),
                "fingerprint": "d15c5104",
            }
        ],
    }


@pytest.fixture(params=["Pacific/Honolulu", "Pacific/Kiritimati"])
def local_zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


async def test_since_without_an_offset_is_utc(
    local_zone: str, client: httpx.AsyncClient, app: FastAPI
) -> None:
    received = await client.post("/api/emergency/alerts", json=_alert())
    assert received.status_code == 200, received.text
    await app.state.runtime.alerts.drain()
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    hour_ago, hour_ahead = (
        (now - timedelta(hours=1)).isoformat(),
        (now + timedelta(hours=1)).isoformat(),
    )
    for since, expected in (
        (hour_ago, 1),
        (hour_ahead, 0),
        (f"{hour_ago}Z", 1),
        (f"{hour_ahead}+00:00", 0),
    ):
        reply = await client.get("/api/emergency/incidents", params={"since": since})
        assert reply.status_code == 200, reply.text
        assert reply.json()["total"] == expected, (local_zone, since)
