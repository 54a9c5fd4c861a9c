"""With backups_enabled=false the backup routes answer 503 "backups are turned off", as the
operator chose. Each such answer used to open a medium "system" incident, one per route:
`ers backup list` against such a service left an active incident behind."""

from __future__ import annotations

import httpx
from fastapi import FastAPI


async def test_the_503_of_backups_turned_off_opens_no_incident(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    listed = await client.get("/api/emergency/backups")
    created = await client.post("/api/emergency/backups/create", json={})
    tried = await client.post("/api/emergency/backups/test-rollback", json={})
    for reply in (listed, created, tried):
        assert reply.status_code == 503, reply.text
        assert reply.json()["detail"] == "backups are turned off"
    await app.state.runtime.incident_service.drain()  # the error spans, written if any
    incidents = (await client.get("/api/emergency/incidents")).json()["incidents"]
    assert incidents == [], [(i["spanName"], i["message"]) for i in incidents]
