"""A firing whose action a crash or ``kill -9`` cut short (the isolation stored, its outcome
not yet) has still landed on its incident: the alert's resolution, at the next start,
releases the breaker and recovers that incident instead of saying that the firing reached
no incident, which left the agent isolated and the critical incident open."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.incidents.responder import ActionResult, ResponseContext

# The webhook tests' fixtures: the alert token set, and a client from Alertmanager's address.
from tests.api.test_alert_webhook import AUTH, FIRING, hook, resolved_payload, settings

__all__ = ["hook", "settings"]


async def post(hook: httpx.AsyncClient, payload: dict[str, Any]) -> None:
    reply = await hook.post("/api/emergency/alerts", json=payload, headers=AUTH)
    assert reply.status_code == 200 and reply.json()["new"] == 1, reply.text


async def test_a_resolution_recovers_what_a_firing_cut_short_did(
    hook: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = app.state.runtime
    alerts = runtime.alerts
    breaker = runtime.team.get("workout").breaker
    acted = asyncio.Event()
    real_run_action = alerts.responder.run_action

    async def run_then_die(action: str, context: ResponseContext) -> ActionResult:
        await real_run_action(action, context)
        acted.set()
        await asyncio.Event().wait()  # the process dies here, before the outcome is kept
        raise AssertionError("never reached")

    monkeypatch.setattr(alerts.responder, "run_action", run_then_die)
    await post(hook, FIRING)
    await acted.wait()
    assert breaker.snapshot()["forced"]["source"] == "alertmanager"
    for task in list(alerts._tasks):
        task.cancel()
    await alerts.drain()
    monkeypatch.undo()
    alerts.ledger.mark_lost()  # what the next start does with an unfinished attempt

    await post(hook, resolved_payload())
    await alerts.drain()
    (incident,) = runtime.incidents.list(component="workout")[0]
    assert incident.status == "resolved", incident.status
    assert breaker.snapshot()["forced"] is None and breaker.state.value == "closed"
