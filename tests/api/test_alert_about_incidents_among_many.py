"""An alert about the active incidents (``about: incidents``) finds the critical incident it
fires for however many lesser incidents were seen after it. It used to look among the 50
active incidents seen last only: with 55 warnings opened after the critical incident,
CriticalIncidentActive was recorded as stale ("none is active; nothing done") and took no
emergency backup while a critical incident was open."""

from __future__ import annotations

import copy
from typing import Any

import httpx
from fastapi import FastAPI

from tests.api.test_alert_webhook import AUTH, FIRING, hook, settings

__all__ = ["hook", "settings"]  # the fixtures, shared with the webhook's tests


async def deliver(hook: httpx.AsyncClient, app: FastAPI, payload: dict[str, Any]) -> None:
    reply = await hook.post("/api/emergency/alerts", json=payload, headers=AUTH)
    assert reply.status_code == 200, reply.text
    await app.state.runtime.alerts.drain()


def warnings(count: int) -> dict[str, Any]:
    """``count`` alerts without an action, each opening a medium incident of its own."""
    payload = copy.deepcopy(FIRING)
    payload["alerts"] = [
        {
            "status": "firing",
            "labels": {"alertname": f"Noise{i}", "severity": "warning"},
            "startsAt": "2026-11-28T12:05:00Z",
            "fingerprint": f"beef{i:04d}",
        }
        for i in range(count)
    ]
    return payload


def about_incidents() -> dict[str, Any]:
    payload = copy.deepcopy(FIRING)
    labels = {
        "alertname": "CriticalIncidentActive",
        "action": "backup",
        "severity": "critical",
        "about": "incidents",
    }
    payload["alerts"][0].update(labels=labels, fingerprint="abab02")
    return payload


async def test_the_critical_incident_is_found_behind_newer_lesser_ones(
    hook: httpx.AsyncClient, app: FastAPI
) -> None:
    store = app.state.runtime.incidents
    await deliver(hook, app, FIRING)
    (critical,) = store.list(status="active")[0]
    assert critical.severity == "critical"
    await deliver(hook, app, warnings(55))
    assert store.list(status="active")[1] == 56

    await deliver(hook, app, about_incidents())
    entry = app.state.runtime.alerts.ledger.entry(
        "abab02", FIRING["alerts"][0]["startsAt"].replace(".000Z", "+00:00"), "firing"
    )
    assert entry is not None
    assert not (entry["outcome"] or "").startswith("stale"), entry
    assert entry["incidentId"] == critical.id, entry
    received = [e.data.get("alertname") for e in store.timeline(critical.id)]
    assert "CriticalIncidentActive" in received
