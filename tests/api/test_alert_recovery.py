"""A resolved alert recovers the incident its firing landed on: an isolate alert's incident is
resolved when the alert resolves and the agent answers ERS's probe, or else mitigated and
resolved when a half-open trial succeeds, so the system leaves the emergency and health
answers 200 again without anyone stepping in, and without a chat, which a balancer heeding
the 503 would never send."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from service.incidents import ledger
from service.settings import Settings
from tests.api.test_alert_webhook import AUTH, FIRING, TOKEN, resolved_payload

FINGERPRINT = FIRING["alerts"][0]["fingerprint"]


@pytest.fixture(params=["sqlite", "postgres"])
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    update: dict[str, Any] = {"alert_token": SecretStr(TOKEN), "recovery_clean_s": 0}
    if request.param == "postgres":
        update["database_url"] = SecretStr(request.getfixturevalue("pg_url"))
    return settings.model_copy(update=update)


async def health_code(client: httpx.AsyncClient, wanted: int) -> httpx.Response:
    """The health reply once it answers ``wanted``: on PostgreSQL the active counts come
    from a cache refreshed every second. Bounded at five seconds."""
    for _ in range(50):
        reply = await client.get("/api/emergency/health")
        if reply.status_code == wanted:
            break
        await asyncio.sleep(0.1)
    return reply


@pytest.fixture
async def hook(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://ers") as http:
        yield http


async def trial(client: httpx.AsyncClient, app: FastAPI, wanted: str) -> None:
    """Chat until the half-open trial has run and left the breaker ``wanted``: on
    PostgreSQL the replica first takes the fleet's trial lease, answering with fallbacks
    meanwhile. Bounded at five seconds."""
    breaker = app.state.runtime.team.get("workout").breaker
    for _ in range(50):
        await client.post("/chat", json={"message": "make me a workout plan"})
        if breaker.state.value == wanted:
            break
        await asyncio.sleep(0.1)
    await app.state.runtime.alerts.drain()
    assert breaker.state.value == wanted


async def deliver(hook: httpx.AsyncClient, app: FastAPI, payload: dict[str, Any]) -> None:
    reply = await hook.post("/api/emergency/alerts", json=payload, headers=AUTH)
    assert reply.status_code == 200, reply.text
    await app.state.runtime.alerts.drain()


def alert(name: str, action: str, fingerprint: str, status: str = "firing") -> dict[str, Any]:
    payload = copy.deepcopy(FIRING)
    payload["status"] = status
    labels = {"alertname": name, "action": action, "severity": "critical"}
    payload["commonLabels"] = payload["groupLabels"] = labels
    payload["alerts"][0].update(labels=labels, fingerprint=fingerprint, status=status)
    return payload


async def metric(client: httpx.AsyncClient, sample_name: str, **labels: str) -> float:
    """A sample of ``/metrics`` as Prometheus scrapes it (0 when there is none)."""
    text = (await client.get("/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == sample_name and labels.items() <= sample.labels.items()
    )


OPENED = "ers_incidents_total"
RECOVERED = "ers_incident_recovery_seconds_count"


def changed_by_alertmanager(store: Any, incident_id: str) -> None:
    """The incident's last status change was the alert's resolution."""
    change = [e for e in store.timeline(incident_id) if e.kind == "status_changed"][-1]
    assert change.actor == "alertmanager" and FINGERPRINT in change.message


async def healthy_again(client: httpx.AsyncClient) -> None:
    health = await health_code(client, 200)
    assert health.status_code == 200
    assert health.json()["systemState"] in ("recovery", "normal")


async def fail(client: httpx.AsyncClient, agent: str) -> None:
    fault = {"component": agent, "errorType": "agent"}
    reply = await client.post("/api/emergency/simulate-error", json=fault)
    assert reply.status_code == 200, reply.text


async def test_resolution_resolves_the_incident_once_the_agent_answers_without_a_chat(
    hook: httpx.AsyncClient, app: FastAPI, client: httpx.AsyncClient
) -> None:
    runtime = app.state.runtime
    store = runtime.incidents
    await deliver(hook, app, FIRING)
    (incident,) = store.list(component="workout")[0]
    # Isolated, it is mitigated, as the responder's own isolation makes it (it read "open").
    assert incident.severity == "critical" and incident.status == "mitigated"
    changed_by_alertmanager(store, incident.id)
    # Counted where the dashboards read the incidents the pipeline opens.
    assert await metric(client, OPENED, component="workout", severity="critical") == 1
    health = await health_code(client, 503)
    assert health.status_code == 503 and health.json()["systemState"] == "emergency"

    await deliver(hook, app, resolved_payload())
    assert runtime.team.get("workout").breaker.state.value == "closed"
    assert store.get(incident.id).status == "resolved"
    notes = [e.message for e in store.timeline(incident.id) if e.kind == "note"]
    assert any("health probe passed and its breaker closed" in note for note in notes)
    changed_by_alertmanager(store, incident.id)
    assert await metric(client, RECOVERED, severity="critical") == 1
    await healthy_again(client)


async def test_resolution_mitigates_and_the_trial_resolves_the_incident(
    hook: httpx.AsyncClient, app: FastAPI, client: httpx.AsyncClient
) -> None:
    runtime = app.state.runtime
    store = runtime.incidents
    await deliver(hook, app, FIRING)
    (incident,) = store.list(component="workout")[0]
    await fail(client, "workout")  # still failing when the alert resolves: the probe fails
    await deliver(hook, app, resolved_payload())
    assert runtime.team.get("workout").breaker.state.value == "half_open"
    mitigated = store.get(incident.id)
    assert mitigated.status == "mitigated"
    notes = [e.message for e in store.timeline(incident.id) if e.kind == "note"]
    assert any("health probe failed" in note for note in notes)
    changed_by_alertmanager(store, incident.id)
    assert await metric(client, RECOVERED, severity="critical") == 1

    assert (await client.delete("/api/emergency/simulate-error")).status_code == 200
    await trial(client, app, "closed")
    resolved = store.get(incident.id)
    assert resolved.status == "resolved"
    # Recovered once, when it was mitigated: its resolution is not a second recovery.
    assert await metric(client, RECOVERED, severity="critical") == 1
    last = [e for e in store.timeline(incident.id) if e.kind != "state_changed"][-1]
    assert (last.kind, last.actor) == ("status_changed", "breaker:workout")
    assert "trial" in last.message and FINGERPRINT in last.message
    await healthy_again(client)


async def test_a_failed_trial_keeps_the_incident_until_one_succeeds(
    hook: httpx.AsyncClient, app: FastAPI, client: httpx.AsyncClient
) -> None:
    runtime = app.state.runtime
    await deliver(hook, app, FIRING)
    await fail(client, "workout")
    await deliver(hook, app, resolved_payload())
    (incident,) = runtime.incidents.list(component="workout")[0]
    await trial(client, app, "open")
    assert runtime.incidents.get(incident.id).status == "mitigated"
    notes = [e.message for e in runtime.incidents.timeline(incident.id) if e.kind == "note"]
    assert any("trial of workout failed" in note for note in notes)


async def test_an_alert_about_incidents_lands_on_them_instead_of_opening_its_own(
    hook: httpx.AsyncClient, app: FastAPI
) -> None:
    store = app.state.runtime.incidents
    await deliver(hook, app, FIRING)
    (critical,) = store.list(status="active")[0]
    await deliver(hook, app, alert("CriticalIncidentActive", "backup", "77aa01"))
    assert store.list(status="active")[1] == 1  # no incident of its own to keep it firing
    kinds = [(e.kind, e.data.get("alertname")) for e in store.timeline(critical.id)]
    assert ("alert_received", "CriticalIncidentActive") in kinds


async def failed_chat(client: httpx.AsyncClient, app: FastAPI) -> None:
    """A chat the workout agent fails for a network error: its incident, of the type its
    cause gives (not ``agent``)."""
    fault = {"component": "workout", "errorType": "network"}
    assert (await client.post("/api/emergency/simulate-error", json=fault)).status_code == 200
    await client.post("/chat", json={"message": "make me a workout plan", "userId": "t"})
    app.state.runtime.incident_service.processor.force_flush()


async def test_an_alert_about_critical_incidents_is_stale_with_a_lesser_one_active(
    hook: httpx.AsyncClient, app: FastAPI, client: httpx.AsyncClient
) -> None:
    """CriticalIncidentUnresolved delivered late, with only a high incident left: landing on
    it would back up or (with auto rollback) roll back all of the state for that one."""
    store = app.state.runtime.incidents
    await failed_chat(client, app)
    (high,) = store.list(status="active")[0]
    assert high.severity != "critical"
    about = alert("CriticalIncidentUnresolved", "rollback", "77aa03")
    about["alerts"][0]["labels"]["about"] = "incidents"
    await deliver(hook, app, about)
    entry = app.state.runtime.alerts.ledger.entry("77aa03", "2026-11-28T12:00:00+00:00", "firing")
    assert entry is not None and entry["outcome"].startswith("stale: it is about the active"), entry
    assert "(critical or worse)" in entry["outcome"]
    assert store.list(status="active")[1] == 1
    assert not [e for e in store.timeline(high.id) if e.kind == "alert_received"]


async def test_an_agents_alert_lands_on_its_incident_whatever_its_type(
    hook: httpx.AsyncClient, app: FastAPI, client: httpx.AsyncClient
) -> None:
    """An agent's failures are typed by their cause (dependency, timeout): AgentErrorRatioHigh
    opened a critical incident of its own beside the agent's, and put the system in
    emergency."""
    store = app.state.runtime.incidents
    await failed_chat(client, app)
    (failing,) = store.list(status="active")[0]
    assert failing.component == "workout" and failing.type != "agent", failing
    await deliver(hook, app, FIRING)
    assert store.list(status="active")[1] == 1
    kinds = [(e.kind, e.data.get("alertname")) for e in store.timeline(failing.id)]
    assert ("alert_received", "AgentErrorRatioHigh") in kinds


async def test_a_backup_alert_lands_on_its_targets_incident_of_any_type(
    hook: httpx.AsyncClient, app: FastAPI, client: httpx.AsyncClient
) -> None:
    """As the README has it: the incident of its target, else the most severe active one.
    Its target's incident of another type than its own was passed over for another
    component's more severe one."""
    store = app.state.runtime.incidents
    await failed_chat(client, app)
    (failing,) = store.list(status="active")[0]
    await deliver(hook, app, alert("SomethingCritical", "none", "77aa0c"))
    assert store.most_severe_active("low").id != failing.id
    stale = alert("BackupStale", "backup", "77aa0d")
    stale["alerts"][0]["labels"]["component"] = "workout"
    await deliver(hook, app, stale)
    kinds = [(e.kind, e.data.get("alertname")) for e in store.timeline(failing.id)]
    assert ("alert_received", "BackupStale") in kinds


async def test_two_alerts_without_an_action_get_an_incident_each(
    hook: httpx.AsyncClient, app: FastAPI
) -> None:
    """They shared one, which the first one's resolution closed while the other fired on."""
    store = app.state.runtime.incidents
    first, second = alert("FooAlert", "none", "77aa04"), alert("BarAlert", "none", "77aa05")
    await deliver(hook, app, first)
    await deliver(hook, app, second)
    active, count = store.list(status="active")
    assert count == 2 and {i.fingerprint for i in active} == {
        "alert:FooAlert:ers",
        "alert:BarAlert:ers",
    }
    await deliver(hook, app, alert("FooAlert", "none", "77aa04", status="resolved"))
    (left,) = store.list(status="active")[0]
    assert left.fingerprint == "alert:BarAlert:ers"


async def test_an_alert_that_opened_its_own_incident_resolves_it(
    hook: httpx.AsyncClient, app: FastAPI
) -> None:
    store = app.state.runtime.incidents
    await deliver(hook, app, alert("BackupStale", "backup", "77aa02"))
    (incident,) = store.list(status="active")[0]
    assert incident.fingerprint == "alert:BackupStale:ers"
    await deliver(hook, app, alert("BackupStale", "backup", "77aa02", status="resolved"))
    assert store.get(incident.id).status == "resolved"


async def test_an_alert_incident_stays_open_while_another_alert_on_it_still_fires(
    hook: httpx.AsyncClient, app: FastAPI
) -> None:
    """BackupStale opens an incident of its own; MemoryCritical, firing next, lands on it
    (the most severe active one). Before: BackupStale's resolution resolved it while the
    critical alert fired on, and no incident was left active for it."""
    store = app.state.runtime.incidents
    await deliver(hook, app, alert("BackupStale", "backup", "77ab01"))
    (incident,) = store.list(status="active")[0]
    await deliver(hook, app, alert("MemoryCritical", "cleanup", "77ab02"))
    # An alert about the active incidents fires because they are: it holds none open.
    about = alert("CriticalIncidentActive", "backup", "77ab03")
    about["alerts"][0]["labels"]["about"] = "incidents"
    await deliver(hook, app, about)
    assert store.list(status="active")[1] == 1

    await deliver(hook, app, alert("BackupStale", "backup", "77ab01", status="resolved"))
    assert store.get(incident.id).status == "open"
    entry = app.state.runtime.alerts.ledger.entry("77ab01", "2026-11-28T12:00:00+00:00", "resolved")
    assert (
        "alert MemoryCritical (fingerprint 77ab02) landed on the incident too" in entry["outcome"]
    )

    # The last alert on it to resolve resolves it, whichever opened it.
    await deliver(hook, app, alert("MemoryCritical", "cleanup", "77ab02", status="resolved"))
    assert store.get(incident.id).status == "resolved"


async def test_a_resolution_on_an_alert_incident_resolved_by_hand_says_so(
    hook: httpx.AsyncClient, app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Before: "alert MemoryCritical ... still fires; the incident is left open", of an
    incident an operator had resolved."""
    store = app.state.runtime.incidents
    await deliver(hook, app, alert("BackupStale", "backup", "78ab01"))
    (incident,) = store.list(status="active")[0]
    await deliver(hook, app, alert("MemoryCritical", "cleanup", "78ab02"))
    done = await client.post(
        f"/api/emergency/incidents/{incident.id}/resolve", json={"resolution": "fixed by hand"}
    )
    assert done.status_code == 200, done.text
    await deliver(hook, app, alert("BackupStale", "backup", "78ab01", status="resolved"))
    entry = app.state.runtime.alerts.ledger.entry("78ab01", "2026-11-28T12:00:00+00:00", "resolved")
    assert entry is not None, entry
    assert entry["outcome"] == ("resolved: the incident is resolved already; nothing to recover"), (
        entry
    )


async def test_an_alert_incident_outlasts_its_quiet_period_while_the_alert_fires(
    hook: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: BackupStale's incident was resolved by the quiet period ("no new errors for
    300 s and ers is healthy") while the alert fired on; its repeats are duplicates, so
    nothing opened it again, and the alert's resolution found it resolved already."""
    runtime = app.state.runtime
    store = runtime.incidents
    monkeypatch.setattr(store, "options", dataclasses.replace(store.options, quiet_period_s=0))
    await deliver(hook, app, alert("BackupStale", "backup", "77ac01"))
    (incident,) = store.list(status="active")[0]
    await runtime.incident_service.tick()
    assert store.get(incident.id).status == "open"
    await deliver(hook, app, alert("BackupStale", "backup", "77ac01", status="resolved"))
    assert store.get(incident.id).status == "resolved"
    assert "auto-resolve" not in {entry.actor for entry in store.timeline(incident.id)}


class LedgerClock:
    """The ledger's clock, moved by hand; monotonic time stays the real one."""

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return time.monotonic()


async def test_a_firing_no_longer_repeated_holds_its_incident_no_more(
    hook: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An alert muted (inhibited, silenced) when it resolves never gets its resolution sent:
    its firing held the incident it landed on open for good. It holds it while Alertmanager
    repeats it, FIRING_HOLD_S after its last delivery."""
    runtime = app.state.runtime
    store = runtime.incidents
    monkeypatch.setattr(store, "options", dataclasses.replace(store.options, quiet_period_s=0))
    clock = LedgerClock()
    monkeypatch.setattr(ledger, "time", clock)
    await deliver(hook, app, alert("BackupStale", "backup", "77ad01"))
    (incident,) = store.list(status="active")[0]
    clock.now += ledger.FIRING_HOLD_S - 60
    await deliver(hook, app, alert("BackupStale", "backup", "77ad01"))  # repeated: held on
    clock.now += ledger.FIRING_HOLD_S - 60
    await runtime.incident_service.tick()
    assert store.get(incident.id).status == "open"
    clock.now += 120  # no repeat since: muted, its resolution will not come
    await runtime.incident_service.tick()
    assert store.get(incident.id).status == "resolved"


async def test_a_breaker_held_by_an_operator_resolves_the_incident_when_reset(
    hook: httpx.AsyncClient, app: FastAPI
) -> None:
    runtime = app.state.runtime
    breaker = runtime.team.get("workout").breaker
    await deliver(hook, app, FIRING)
    (incident,) = runtime.incidents.list(component="workout")[0]
    breaker.force_open("checking the workout agent by hand", "operator:ana")
    await deliver(hook, app, resolved_payload())
    assert breaker.state.value == "forced_open"  # not the alert's to release
    assert runtime.incidents.get(incident.id).status == "mitigated"

    breaker.reset(force=True, source="operator:ana")
    await runtime.alerts.drain()
    assert runtime.incidents.get(incident.id).status == "resolved"
    # System state notes are written by a thread of their own and may land after it.
    timeline = runtime.incidents.timeline(incident.id)
    last = [entry for entry in timeline if entry.kind != "state_changed"][-1]
    assert "its breaker closed (reset with force, by operator:ana)" in last.message


@pytest.mark.parametrize("agent_answers", [True, False], ids=["answering", "still-failing"])
async def test_a_breaker_found_closed_at_the_resolution_is_asked_before_the_incident_resolves(
    hook: httpx.AsyncClient, app: FastAPI, client: httpx.AsyncClient, agent_answers: bool
) -> None:
    """Closed by an operator's reset, or by a restart, which keeps no released isolation
    (a kill -9 during the resolution): the replayed resolution resolved the incident while
    the agent still failed."""
    runtime = app.state.runtime
    breaker = runtime.team.get("workout").breaker
    await deliver(hook, app, FIRING)
    (incident,) = runtime.incidents.list(component="workout")[0]
    breaker.reset(force=True, source="operator:ana")
    if not agent_answers:
        await fail(client, "workout")
    await deliver(hook, app, resolved_payload())
    found = runtime.incidents.get(incident.id)
    notes = [e.message for e in runtime.incidents.timeline(incident.id) if e.kind == "note"]
    if agent_answers:
        assert found.status == "resolved"
        assert any("its health probe passed" in note for note in notes), notes
    else:
        assert found.status == "mitigated"
        assert any("its health probe failed" in note for note in notes), notes


async def test_the_next_firing_after_a_resolved_one_isolates_again_within_the_cooldown(
    hook: httpx.AsyncClient, app: FastAPI, client: httpx.AsyncClient
) -> None:
    breaker = app.state.runtime.team.get("workout").breaker
    await deliver(hook, app, FIRING)
    await deliver(hook, app, resolved_payload())
    assert breaker.state.value == "closed"  # the agent answered ERS's probe
    # The condition comes back a minute later: a new firing of the alert (another startsAt).
    again = copy.deepcopy(FIRING)
    again["alerts"][0]["startsAt"] = "2026-11-28T12:20:00.000Z"
    await deliver(hook, app, again)
    # Before: "isolate: skipped — already tried for this incident", the breaker left closed.
    assert breaker.state.value == "forced_open"
    assert breaker.snapshot()["forced"]["source"] == "alertmanager"


async def test_an_isolation_skipped_for_the_cooldown_runs_when_it_ends_if_still_firing(
    hook: httpx.AsyncClient, app: FastAPI
) -> None:
    """The responder isolated the agent, an operator released it with the agent still
    failing, and the alert that fired then was skipped for the cooldown: every later
    delivery was a duplicate, so nothing isolated the agent again, ever."""
    runtime = app.state.runtime
    runtime.alerts.responder.cooldown_s = 1.0  # what responder_cooldown_s sets, shortened
    breaker = runtime.team.get("workout").breaker
    await deliver(hook, app, FIRING)
    assert breaker.state.value == "forced_open"
    breaker.release(source="admin:ana")
    again = alert("AgentErrorRatioHigh", "isolate", "77aa09")
    again["alerts"][0]["labels"]["agent"] = "workout"
    await deliver(hook, app, again)
    starts_at = "2026-11-28T12:00:00+00:00"  # as the ledger keeps it
    entry = runtime.alerts.ledger.entry("77aa09", starts_at, "firing")
    assert entry is not None and "skipped within the cooldown" in entry["outcome"], entry
    assert breaker.state.value != "forced_open"
    for _ in range(50):  # the cooldown's end, bounded at about 5 s
        if breaker.state.value == "forced_open":
            break
        await asyncio.sleep(0.1)
    assert breaker.state.value == "forced_open"
    assert (breaker.snapshot()["forced"] or {}).get("source") == "alertmanager"
    for _ in range(50):  # its outcome is written once the action has run
        entry = runtime.alerts.ledger.entry("77aa09", starts_at, "firing")
        if entry and "once the cooldown ended" in (entry["outcome"] or ""):
            break
        await asyncio.sleep(0.1)
    assert entry and entry["outcome"] == "isolate: success, once the cooldown ended", entry


async def test_a_firing_delivered_twice_within_the_cooldown_isolates_once_and_is_released(
    hook: httpx.AsyncClient, app: FastAPI
) -> None:
    """Each delivery skipped by the cooldown waited for its end: the first isolated the
    agent, the second was then skipped by the cooldown that isolation started and wrote its
    skip over the success. The resolution read "its firing isolated nothing" and left the
    agent forced open by the alert for the isolation's whole TTL (900 s)."""
    runtime = app.state.runtime
    runtime.alerts.responder.cooldown_s = 1.0  # what responder_cooldown_s sets, shortened
    breaker = runtime.team.get("workout").breaker
    await deliver(hook, app, FIRING)
    breaker.release(source="admin:ana")
    again = alert("AgentErrorRatioHigh", "isolate", "77aa0b")
    again["alerts"][0]["labels"]["agent"] = "workout"
    await deliver(hook, app, again)
    await deliver(hook, app, again)  # an Alertmanager pair sends each notification twice
    await asyncio.wait_for(asyncio.gather(*runtime.alerts._timers), timeout=10)
    assert breaker.snapshot()["forced"]["source"] == "alertmanager"
    entry = runtime.alerts.ledger.entry("77aa0b", "2026-11-28T12:00:00+00:00", "firing")
    assert entry and entry["outcome"] == "isolate: success, once the cooldown ended", entry

    await deliver(hook, app, resolved_payload())  # the first alert: the second holds it
    assert breaker.state.value == "forced_open"
    resolved = alert("AgentErrorRatioHigh", "isolate", "77aa0b", status="resolved")
    resolved["alerts"][0]["labels"]["agent"] = "workout"
    await deliver(hook, app, resolved)
    assert breaker.state.value != "forced_open"


async def test_a_resolution_after_an_operator_resolved_the_incident_says_so_plainly(
    hook: httpx.AsyncClient, app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Its outcome read "incident not resolved: incident … is resolved and cannot be
    resolved; it reopens by itself when the error recurs"."""
    runtime = app.state.runtime
    await deliver(hook, app, FIRING)
    (incident,) = runtime.incidents.list(component="workout")[0]
    done = await client.post(
        f"/api/emergency/incidents/{incident.id}/resolve", json={"resolution": "fixed by hand"}
    )
    assert done.status_code == 200, done.text
    await deliver(hook, app, resolved_payload())
    entry = runtime.alerts.ledger.entry(FINGERPRINT, "2026-11-28T12:00:00+00:00", "resolved")
    assert entry is not None and entry["outcome"].endswith("; incident resolved already"), entry
