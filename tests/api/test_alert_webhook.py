"""Alertmanager's webhook with recorded version-4 payloads: firing, resolved, duplicates,
unknown actions, bad tokens and malformed bodies."""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from service.settings import Settings

TOKEN = "alert-hook-3f9a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

FIRING: dict[str, Any] = {
    "version": "4",
    "groupKey": '{}/{action="isolate"}:{alertname="AgentErrorRatioHigh", agent="workout"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "ers-isolate",
    "groupLabels": {"alertname": "AgentErrorRatioHigh", "agent": "workout"},
    "commonLabels": {
        "alertname": "AgentErrorRatioHigh",
        "agent": "workout",
        "action": "isolate",
        "severity": "critical",
    },
    "commonAnnotations": {"summary": "workout agent failing"},
    "externalURL": "http://alertmanager:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {
                "alertname": "AgentErrorRatioHigh",
                "agent": "workout",
                "action": "isolate",
                "severity": "critical",
                "job": "ers",
            },
            "annotations": {
                "summary": "workout agent failing",
                "description": "error ratio 0.9 over 5m",
                "runbook": "https://ers.example/runbooks/AgentErrorRatioHigh",
            },
            "startsAt": "2026-11-28T12:00:00.000Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph?g0.expr=...",
            "fingerprint": "5e0f1c9a2b3d4e5f",
        }
    ],
}


def resolved_payload() -> dict[str, Any]:
    payload = copy.deepcopy(FIRING)
    payload["status"] = "resolved"
    payload["alerts"][0]["status"] = "resolved"
    payload["alerts"][0]["endsAt"] = "2026-11-28T12:10:00.000Z"
    return payload


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"alert_token": SecretStr(TOKEN)})


@pytest.fixture
async def hook(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://ers") as http:
        yield http


async def settle(app: FastAPI) -> None:
    await app.state.runtime.alerts.drain()


async def test_firing_isolate_forces_the_breaker_open_once(
    hook: httpx.AsyncClient, app: FastAPI
) -> None:
    for _ in range(3):  # retries and an HA pair deliver the same notification again
        reply = await hook.post("/api/emergency/alerts", json=FIRING, headers=AUTH)
        assert reply.status_code == 200
    await settle(app)
    breaker = app.state.runtime.team.get("workout").breaker
    assert breaker.state.value == "forced_open"
    snapshot = breaker.snapshot()
    assert snapshot["forced"]["source"] == "alertmanager"
    assert "AgentErrorRatioHigh" in snapshot["forced"]["reason"]
    history = [e for e in breaker.history() if e.to_state.value == "forced_open"]
    assert len(history) == 1  # one action for three deliveries
    store = app.state.runtime.incidents
    (incident,) = store.list(component="workout")[0]
    kinds = [e.kind for e in store.timeline(incident.id)]
    assert kinds.count("alert_received") == 1
    assert "action_finished" in kinds
    ledger = app.state.runtime.alerts.ledger.entry(
        "5e0f1c9a2b3d4e5f", "2026-11-28T12:00:00+00:00", "firing"
    )
    assert ledger["deliveries"] == 3 and ledger["incidentId"] == incident.id


async def test_resolved_isolate_closes_the_breaker_once_the_agent_answers(
    hook: httpx.AsyncClient, app: FastAPI, client: httpx.AsyncClient
) -> None:
    await hook.post("/api/emergency/alerts", json=FIRING, headers=AUTH)
    await settle(app)
    await hook.post("/api/emergency/alerts", json=resolved_payload(), headers=AUTH)
    await settle(app)
    breaker = app.state.runtime.team.get("workout").breaker
    assert breaker.state.value == "closed"
    assert breaker.history()[-1].source == "alertmanager"


async def test_resolved_isolate_of_an_agent_still_failing_leaves_it_half_open(
    hook: httpx.AsyncClient, app: FastAPI, client: httpx.AsyncClient
) -> None:
    await hook.post("/api/emergency/alerts", json=FIRING, headers=AUTH)
    await settle(app)
    fault = {"component": "workout", "errorType": "agent"}
    assert (await client.post("/api/emergency/simulate-error", json=fault)).status_code == 200
    await hook.post("/api/emergency/alerts", json=resolved_payload(), headers=AUTH)
    await settle(app)
    breaker = app.state.runtime.team.get("workout").breaker
    assert breaker.state.value == "half_open"
    await client.delete("/api/emergency/simulate-error")
    reply = await client.post("/chat", json={"message": "make me a workout plan"})
    assert reply.json()["emergency"] is False
    assert breaker.state.value == "closed"


def by_alias(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload of a rule that names the workout agent by its alias, WPA."""
    payload = copy.deepcopy(payload)
    payload["commonLabels"]["agent"] = payload["alerts"][0]["labels"]["agent"] = "WPA"
    return payload


async def test_an_alert_naming_an_agent_by_its_alias_is_the_agents_incident(
    hook: httpx.AsyncClient, app: FastAPI
) -> None:
    await hook.post("/api/emergency/alerts", json=by_alias(FIRING), headers=AUTH)
    await settle(app)
    store = app.state.runtime.incidents
    (incident,) = store.list(component="workout")[0]
    assert incident.component == "workout"
    assert store.list(component="WPA")[0] == []

    await hook.post("/api/emergency/alerts", json=by_alias(resolved_payload()), headers=AUTH)
    await settle(app)
    assert app.state.runtime.team.get("workout").breaker.state.value == "closed"
    assert store.get(incident.id).status == "resolved"


async def test_resolved_alert_never_starts_an_action(hook: httpx.AsyncClient, app: FastAPI) -> None:
    payload = resolved_payload()
    payload["alerts"][0]["labels"]["action"] = "backup"
    reply = await hook.post("/api/emergency/alerts", json=payload, headers=AUTH)
    assert reply.json() == {"received": 1, "new": 1, "duplicates": 0}
    await settle(app)
    assert app.state.runtime.team.get("workout").breaker.state.value == "closed"


async def test_unknown_action_is_recorded_and_answered_200(
    hook: httpx.AsyncClient, app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ers.alerts")
    payload = copy.deepcopy(FIRING)
    payload["alerts"][0]["labels"]["action"] = "reboot-the-moon"
    payload["alerts"][0]["labels"]["severity"] = "critical"
    payload["alerts"][0]["fingerprint"] = "aaaa1111bbbb2222"
    reply = await hook.post("/api/emergency/alerts", json=payload, headers=AUTH)
    assert reply.status_code == 200
    await settle(app)
    store = app.state.runtime.incidents
    (incident,) = store.list(component="workout")[0]
    notes = [e.message for e in store.timeline(incident.id) if e.kind == "note"]
    assert any("unknown action 'reboot-the-moon'" in n for n in notes)
    # Before: a critical incident at its severity label, an emergency, a backup, a rollback.
    assert incident.severity == "low"
    assert app.state.runtime.team.get("workout").breaker.state.value == "closed"
    # Alertmanager logs nothing of a 200: ERS's log names the rule to fix.
    (said,) = [r.getMessage() for r in caplog.records if "unknown action" in r.getMessage()]
    assert "'reboot-the-moon' (ERS knows isolate, backup, rollback, cleanup)" in said


async def test_one_instant_in_another_offset_is_the_same_delivery(
    hook: httpx.AsyncClient, app: FastAPI
) -> None:
    """Before: the ledger's key kept the offset as sent, so ``13:00+01:00`` after ``12:00Z``
    was a new firing of the alert, acted on again."""
    first = await hook.post("/api/emergency/alerts", json=FIRING, headers=AUTH)
    assert first.json() == {"received": 1, "new": 1, "duplicates": 0}
    again = copy.deepcopy(FIRING)
    starts = datetime.fromisoformat(FIRING["alerts"][0]["startsAt"])
    shifted = starts.astimezone(timezone(timedelta(hours=1))).isoformat()
    again["alerts"][0]["startsAt"] = shifted
    assert not shifted.endswith(("Z", "+00:00"))
    reply = await hook.post("/api/emergency/alerts", json=again, headers=AUTH)
    assert reply.json() == {"received": 1, "new": 0, "duplicates": 1}
    await settle(app)


async def test_a_long_description_is_taken_where_alertmanager_repeats_it(
    hook: httpx.AsyncClient, app: FastAPI
) -> None:
    """A group of one alert repeats its annotations in commonAnnotations: a description
    longer than a label may be was refused there (422), and with it the whole batch."""
    payload = copy.deepcopy(FIRING)
    payload["alerts"][0]["annotations"]["description"] = "d" * 20_000
    payload["alerts"][0]["labels"]["instance"] = "i" * 3000  # no name of the incident's
    payload["commonAnnotations"] = dict(payload["alerts"][0]["annotations"])
    reply = await hook.post("/api/emergency/alerts", json=payload, headers=AUTH)
    assert reply.status_code == 200, reply.text
    await settle(app)


async def test_bad_token_gets_401(hook: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
        reply = await hook.post("/api/emergency/alerts", json=FIRING, headers=headers)
        assert reply.status_code == 401
        assert reply.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (lambda p: p.update(version="3"), "version"),
        (lambda p: p.update(alerts=[]), "alerts"),
        (lambda p: p["alerts"][0].pop("fingerprint"), "fingerprint"),
        (lambda p: p["alerts"][0].update(status="pending"), "status"),
        (lambda p: p["alerts"][0].update(startsAt="yesterday"), "startsAt"),
        # Before: an incident whose component was 900,000 characters, in every list.
        (lambda p: p["alerts"][0]["labels"].update(agent="y" * 900_000), "at most 4096"),
        # It names the incident: no longer than a span's names are kept (and PostgreSQL
        # indexes it, 2704 bytes at most).
        (lambda p: p["alerts"][0]["labels"].update(agent="y" * 300), "at most 256"),
        (lambda p: p["alerts"][0]["annotations"].update(x="y" * 70_000), "at most 65536"),
    ],
)
async def test_malformed_payloads_get_422_with_the_reason(
    hook: httpx.AsyncClient, mutate: Any, expected: str
) -> None:
    payload = copy.deepcopy(FIRING)
    mutate(payload)
    reply = await hook.post("/api/emergency/alerts", json=payload, headers=AUTH)
    assert reply.status_code == 422
    assert expected in reply.json()["detail"]


async def test_unrecordable_alert_gets_503_so_alertmanager_retries(
    hook: httpx.AsyncClient, app: FastAPI
) -> None:
    # The ledger lives on the incident store's database: closed, it cannot record.
    app.state.runtime.incidents.database.close()
    reply = await hook.post("/api/emergency/alerts", json=FIRING, headers=AUTH)
    assert reply.status_code == 503
    assert "could not record" in reply.json()["detail"]


async def test_an_alerts_words_become_a_reason_of_one_plain_line(
    hook: httpx.AsyncClient, app: FastAPI
) -> None:
    """The isolate action's reason is the alert's summary, shown in `ers breakers show`'s
    table: an annotation of several lines, with an escape sequence or a right-to-left
    override, broke the row or reordered what an operator reads."""
    payload = copy.deepcopy(FIRING)
    payload["alerts"][0]["labels"]["alertname"] = "AgentErrorRatio\nHigh"
    payload["alerts"][0]["annotations"]["summary"] = (
        "workout agent failing\n  since 12:00\x1b[31m red\u202eevil\u200b"
    )
    reply = await hook.post("/api/emergency/alerts", json=payload, headers=AUTH)
    assert reply.status_code == 200
    await settle(app)
    reason = app.state.runtime.team.get("workout").breaker.snapshot()["forced"]["reason"]
    assert reason == (
        "alert AgentErrorRatio High: workout agent failing since 12:00 [31m redevil"
    ), reason


def one_alert(name: str, fingerprint: str, status: str, **labels: str) -> dict[str, Any]:
    """A delivery of one alert about ERS itself (no agent label) with ``labels`` added."""
    payload = copy.deepcopy(resolved_payload() if status == "resolved" else FIRING)
    alert = payload["alerts"][0]
    alert["labels"] = {"alertname": name, "severity": "warning", "job": "ers", **labels}
    alert["fingerprint"] = fingerprint
    payload["commonLabels"] = payload["groupLabels"] = {"alertname": name}
    return payload


async def test_an_isolate_alert_naming_no_agent_opens_an_incident_of_its_own(
    hook: httpx.AsyncClient, app: FastAPI
) -> None:
    """Before: it landed on whatever incident of ERS was active, another alert's, and held
    that one open after its own alert resolved, until the quiet period."""
    store = app.state.runtime.incidents
    other = one_alert("DiskFilling", "1111aaaa2222bbbb", "firing")
    await hook.post("/api/emergency/alerts", json=other, headers=AUTH)
    await settle(app)
    (opened,) = store.list(component="ers")[0]

    isolate = one_alert("IsolateSomething", "3333cccc4444dddd", "firing", action="isolate")
    await hook.post("/api/emergency/alerts", json=isolate, headers=AUTH)
    await settle(app)
    incidents = store.list(component="ers")[0]
    assert len(incidents) == 2
    (its_own,) = [i for i in incidents if i.id != opened.id]
    assert "IsolateSomething" in its_own.message
    timeline = [e.message for e in store.timeline(opened.id)]
    assert not any("IsolateSomething" in line for line in timeline)

    # The other alert resolves while the isolate alert still fires: its incident resolves.
    resolved = one_alert("DiskFilling", "1111aaaa2222bbbb", "resolved")
    await hook.post("/api/emergency/alerts", json=resolved, headers=AUTH)
    await settle(app)
    assert store.get(opened.id).status == "resolved"
    assert store.get(its_own.id).status != "resolved"

    resolved = one_alert("IsolateSomething", "3333cccc4444dddd", "resolved", action="isolate")
    await hook.post("/api/emergency/alerts", json=resolved, headers=AUTH)
    await settle(app)
    assert store.get(its_own.id).status == "resolved"


async def test_an_isolate_alert_naming_no_agent_of_the_team_opens_no_critical_incident(
    hook: httpx.AsyncClient, app: FastAPI
) -> None:
    """Before: a mistyped agent label on a critical isolate alert isolated nothing, yet
    opened a critical incident: the system state went to emergency (health 503), the
    CriticalIncidentActive alert took an emergency backup, and CriticalIncidentUnresolved
    would have rolled the whole state back."""
    typo = copy.deepcopy(FIRING)
    typo["alerts"][0]["labels"]["agent"] = "wokrout"
    typo["alerts"][0]["fingerprint"] = "aaaa1111bbbb2222"
    reply = await hook.post("/api/emergency/alerts", json=typo, headers=AUTH)
    assert reply.status_code == 200, reply.text
    await settle(app)
    store = app.state.runtime.incidents
    (incident,) = store.list(component="wokrout")[0]
    assert incident.severity == "low", incident
    timeline = [e.message for e in store.timeline(incident.id)]
    assert any("'wokrout' is not an agent" in line for line in timeline), timeline
    health = await hook.get("/api/emergency/health")
    assert health.json()["systemState"] != "emergency", health.json()
    # A real agent's critical isolate alert stays critical.
    await hook.post("/api/emergency/alerts", json=FIRING, headers=AUTH)
    await settle(app)
    (real,) = store.list(component="workout")[0]
    assert real.severity == "critical"
