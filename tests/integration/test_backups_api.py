"""Backups through the API against the real restic binary: create, list, details, test
rollback, rollback with its safety snapshot, component-only rollback, and refusals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from backup.events import RollbackStepStarted
from service.settings import Settings
from tests.integration.conftest import asgi_client, backups_app
from tests.processes import restic_failing_on, slow_restic
from tests.store_writes import turn_count


@pytest.fixture
async def backup_app(settings: Settings) -> AsyncIterator[FastAPI]:
    async with backups_app(settings) as application:
        yield application


@pytest.fixture
async def http(backup_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(backup_app) as c:
        yield c


async def budget_left(http: httpx.AsyncClient) -> str:
    reply = await http.post("/chat", json={"message": "budget report", "userId": "ann"})
    return reply.json()["response"]


async def test_backup_test_rollback_and_rollback_round_trip(
    http: httpx.AsyncClient, backup_app: FastAPI
) -> None:
    await http.post("/chat", json={"message": "set my food budget to $400", "userId": "ann"})
    await http.post("/chat", json={"message": "spent $50 on groceries", "userId": "ann"})
    before = await budget_left(http)
    assert "$350.00 left" in before

    created = await http.post(
        "/api/emergency/backups/create", json={"reason": "pre_test_backup", "type": "full_system"}
    )
    assert created.status_code == 200, created.text
    backup_id = created.json()["backupId"]
    assert set(created.json()["components"]) >= {"budgets", "conversations", "incidents"}

    listed = (await http.get("/api/emergency/backups")).json()
    assert listed["available"] == 1 and listed["lastBackup"]
    assert listed["backups"][0]["reason"] == "pre_test_backup"
    details = (await http.get(f"/api/emergency/backups/{backup_id}")).json()
    assert any(f["path"].endswith("budgets.sqlite3") for f in details["files"])

    # Change the data after the backup.
    await http.post("/chat", json={"message": "spent $300 on restaurants", "userId": "ann"})
    assert "$50.00 left" in await budget_left(http)

    preview = await http.post(
        "/api/emergency/backups/test-rollback",
        json={"backupId": backup_id, "components": ["budgets"]},
    )
    assert preview.status_code == 200, preview.text
    expenses = preview.json()["components"]["budgets"]["tables"]["expenses"]
    # The rollback would remove the one expense recorded since, by its key.
    assert expenses == {
        "rowsNow": 2,
        "rowsInSnapshot": 1,
        "added": 0,
        "removed": 1,
        "changed": 0,
    }
    assert preview.json()["liveStateTouched"] is False
    assert "$50.00 left" in await budget_left(http)  # the dry run touched nothing

    refused = await http.post(
        "/api/emergency/rollback", json={"backupId": backup_id, "reason": "oops"}
    )
    assert refused.status_code == 400 and '"confirm": true' in refused.json()["detail"]

    done = await http.post(
        "/api/emergency/rollback",
        json={
            "backupId": backup_id,
            "confirm": True,
            "reason": "bad import",
            "components": ["budgets"],
        },
    )
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["safetyBackupId"] and body["components"] == ["budgets"]
    assert {"restore", "verify", "swap"} <= set(body["stepSeconds"])
    assert "$350.00 left" in await budget_left(http)

    # Only budgets went back: conversations still hold every turn, and the safety snapshot
    # of the pre-rollback state is in the list.
    turns = await turn_count(backup_app.state.runtime.stores.conversations)
    assert turns >= 6
    snapshots = (await http.get("/api/emergency/backups")).json()["backups"]
    reasons = {s["backupId"][:8]: s["reason"] for s in snapshots}
    assert reasons[body["safetyBackupId"][:8]] == "pre-rollback"
    # The audit trail says who rolled back what and why, over HTTP.
    [entry] = (await http.get("/api/emergency/audit", params={"limit": 1})).json()["entries"]
    assert (entry["actor"], entry["action"]) == ("admin", "rollback")
    assert entry["detail"]["safetyBackupId"] == body["safetyBackupId"]
    assert entry["detail"]["components"] == ["budgets"] and entry["at"].endswith("+00:00")

    # A rollback refused (no such snapshot) is in the trail with its refusal: its start,
    # written before it began, is never left there alone as if a kill had cut it off.
    refused = await http.post(
        "/api/emergency/rollback",
        json={"backupId": "deadbeef", "confirm": True, "reason": "typo"},
    )
    assert refused.status_code == 404, refused.text
    entries = (await http.get("/api/emergency/audit", params={"limit": 2})).json()["entries"]
    assert [e["action"] for e in entries] == ["rollback", "rollback_started"], entries
    assert entries[0]["detail"]["error"].startswith("refused: no ERS snapshot deadbeef"), entries

    text = (await http.get("/metrics")).text
    assert 'ers_rollbacks_total{result="success"} 1.0' in text
    assert 'ers_backup_last_success_timestamp_seconds{component="budgets"}' in text


async def test_the_trail_names_what_a_rollback_of_every_component_replaced(
    http: httpx.AsyncClient,
) -> None:
    """No components named: the trail's entry said `components: null`, where the offline
    rollback's names them; which files were replaced could not be read from it."""
    created = await http.post("/api/emergency/backups/create", json={"type": "full_system"})
    assert created.status_code == 200, created.text
    body = {"backupId": created.json()["backupId"], "confirm": True, "reason": "whole"}
    done = await http.post("/api/emergency/rollback", json=body)
    assert done.status_code == 200, done.text
    [entry] = (await http.get("/api/emergency/audit", params={"limit": 1})).json()["entries"]
    assert entry["action"] == "rollback"
    assert entry["detail"]["components"] == done.json()["components"]
    assert {"budgets", "conversations", "profiles"} <= set(entry["detail"]["components"])


async def test_the_pause_before_the_swap_says_the_store_is_being_replaced(
    http: httpx.AsyncClient, backup_app: FastAPI
) -> None:
    await http.post("/chat", json={"message": "set my food budget to $400", "userId": "ann"})
    created = await http.post("/api/emergency/backups/create", json={"type": "budgets"})
    assert created.status_code == 200, created.text
    steps: list[str] = []
    backup_app.state.runtime.backups.subscribe(
        lambda event: steps.append(event.step) if isinstance(event, RollbackStepStarted) else None
    )
    body = {
        "backupId": created.json()["backupId"],
        "confirm": True,
        "reason": "pause words",
        "components": ["budgets"],
    }
    rollback = asyncio.create_task(http.post("/api/emergency/rollback", json=body))
    seen: tuple[str, str, list[str]] | None = None
    while seen is None and not rollback.done():
        ready = await http.get("/readyz")
        chat = await http.post("/chat", json={"message": "spent $30 on food", "userId": "ann"})
        if ready.status_code == chat.status_code == 503 and "swap" not in steps:
            seen = (ready.json()["reason"], chat.json()["detail"], list(steps))
        await asyncio.sleep(0.01)
    assert (await rollback).status_code == 200
    assert seen is not None, f"no reply came during the pause before the swap ({steps})"
    # Before: "a rollback is swapping state files" and "…is swapping this store's file",
    # while restic was still restoring and no file was being swapped yet.
    reason, detail, steps_then = seen
    assert {"restore", "safety-snapshot"} & set(steps_then), steps_then
    assert reason == "a rollback is replacing the state of budgets (restore, safety snapshot, swap)"
    assert detail == (
        "the budgets store is paused: a rollback is replacing this store "
        "(restore, safety snapshot, swap); retry shortly"
    )


@pytest.mark.parametrize(
    "path,code",
    [
        ("/api/emergency/backups/--password-file=x", 422),
        ("/api/emergency/backups/..%2F..%2Fetc", 404),  # no route takes a path
        ("/api/emergency/backups/deadbeefdeadbeef", 404),
        ("/api/emergency/backups/DEADBEEF", 422),
        ("/api/emergency/backups/create", 405),  # an action, not a snapshot id
    ],
)
async def test_bad_and_unknown_ids(http: httpx.AsyncClient, path: str, code: int) -> None:
    reply = await http.get(path)
    assert reply.status_code == code, reply.text
    if path.endswith("DEADBEEF"):
        assert "lowercase" in reply.json()["detail"] and "'deadbeef'" in reply.json()["detail"]
    if code == 405:
        assert reply.json()["detail"].endswith("does not take GET: use POST")
        assert reply.headers["allow"] == "POST"


@pytest.mark.parametrize(
    "path,extra",
    [
        ("/api/emergency/rollback", {"confirm": True, "reason": "x"}),
        ("/api/emergency/backups/test-rollback", {}),
    ],
)
@pytest.mark.parametrize(
    "backup_id,said",
    [
        ("AF0FBA50", "ids are lowercase hex, as the list shows them ('af0fba50')"),
        ("af0f", "use the 8 to 64 hex characters shown in the list"),
    ],
)
async def test_a_bad_id_in_a_body_is_told_as_a_bad_id_in_a_path_is(
    http: httpx.AsyncClient, path: str, extra: dict[str, object], backup_id: str, said: str
) -> None:
    # Before: "backupId: 'AF0FBA50' is not a value matching ^[0-9a-f]{8,64}$".
    in_path = await http.get(f"/api/emergency/backups/{backup_id}")
    in_body = await http.post(path, json={"backupId": backup_id, **extra})
    assert in_path.status_code == in_body.status_code == 422, in_body.text
    assert said in in_path.json()["detail"]
    assert in_body.json()["problems"] == [f"backupId: {in_path.json()['detail']}"]


async def test_rollback_refusals(http: httpx.AsyncClient, backup_app: FastAPI) -> None:
    injected = await http.post(
        "/api/emergency/rollback",
        json={"backupId": "--password-file=x", "confirm": True, "reason": "x"},
    )
    assert injected.status_code == 422
    both = await http.post(
        "/api/emergency/rollback",
        json={
            "backupId": "deadbeef",
            "beforeIncident": "INC_1700000000000_abcdef",
            "confirm": True,
            "reason": "x",
        },
    )
    assert both.status_code == 422 and "exactly one" in both.json()["detail"]
    backup_app.state.settings.__dict__["emergency_rollback_enabled"] = False
    disabled = await http.post(
        "/api/emergency/rollback", json={"backupId": "deadbeef", "confirm": True, "reason": "x"}
    )
    assert disabled.status_code == 409


async def test_system_test_names_an_unreachable_repository(
    http: httpx.AsyncClient, backup_app: FastAPI, tmp_path: Path
) -> None:
    healthy = (await http.post("/api/emergency/test-system")).json()
    assert healthy["passed"] is True, healthy
    steps = {s["step"]: s for s in healthy["steps"]}
    assert steps["incident-pipeline"]["passed"] and steps["restic-repository"]["passed"]
    repository = Path(backup_app.state.settings.restic_repository)
    repository.rename(tmp_path / "repository-moved-away")
    broken = (await http.post("/api/emergency/test-system")).json()
    assert broken["passed"] is False
    assert broken["failedSteps"] == ["restic-repository"]
    health = await http.get("/api/emergency/health")
    assert health.status_code == 503
    assert health.json()["checks"]["repository"]["status"] == "unhealthy"
    # The failed check went through the incident pipeline like any failed call: a
    # repository that was there and is gone is critical, never an empty new one.
    await backup_app.state.runtime.incident_service.drain()
    incident = backup_app.state.runtime.incidents.find_active("backups")
    assert incident is not None and incident.exception_type == "RepositoryMissing"
    assert incident.severity == "critical"
    assert not repository.exists()
    assert (await http.post("/chat", json={"message": "plan my meals"})).status_code == 200


async def budget_incident(http: httpx.AsyncClient) -> str:
    """A failing budget call, and the id of the incident it opens (bounded wait)."""
    return await failed_call_incident(http, "budget", "database", "budget report")


async def failed_call_incident(
    http: httpx.AsyncClient, agent: str, error_type: str, message: str
) -> str:
    """A failing call of ``agent``, and the id of the incident it opens (bounded wait)."""
    fault = {"component": agent, "errorType": error_type}
    assert (await http.post("/api/emergency/simulate-error", json=fault)).status_code == 200
    reply = await http.post("/chat", json={"message": message, "userId": "bob"})
    assert reply.status_code == 200 and reply.json()["success"] is False, reply.text
    assert (await http.delete("/api/emergency/simulate-error")).status_code == 200
    for _ in range(100):
        found = (await http.get("/api/emergency/incidents", params={"component": agent})).json()
        if found["incidents"]:
            return str(found["incidents"][0]["id"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"the failing {agent} call opened no incident")


async def test_a_rollback_to_before_an_incident_takes_a_snapshot_holding_what_it_rolls_back(
    http: httpx.AsyncClient,
) -> None:
    """The newest snapshot before the incident held budgets alone (a component's own backup):
    before, a rollback of profiles to before the incident was refused for it, and one of
    the whole state rolled back budgets only and answered "rolledBack"."""
    await http.post("/chat", json={"message": "set my food budget to $400", "userId": "ann"})
    full = await http.post("/api/emergency/backups/create", json={"type": "full_system"})
    assert full.status_code == 200, full.text
    budgets_only = await http.post("/api/emergency/backups/create", json={"type": "budgets"})
    assert budgets_only.json()["components"] == ["budgets"], budgets_only.text
    await asyncio.sleep(0.05)  # the incident begins after both snapshots
    incident_id = await budget_incident(http)

    profiles = await http.post(
        "/api/emergency/rollback",
        json={
            "beforeIncident": incident_id,
            "components": ["profiles"],
            "confirm": True,
            "reason": "bad profile import",
        },
    )
    assert profiles.status_code == 200, profiles.text
    assert profiles.json()["backupId"] == full.json()["backupId"]
    assert profiles.json()["components"] == ["profiles"]

    everything = await http.post(
        "/api/emergency/rollback",
        json={"beforeIncident": incident_id, "confirm": True, "reason": "bad deploy"},
    )
    assert everything.status_code == 200, everything.text
    assert everything.json()["backupId"] == full.json()["backupId"]
    assert set(everything.json()["components"]) == {
        "conversations",
        "budgets",
        "profiles",
        "system_state",
    }


async def rollback_before(http: httpx.AsyncClient, incident_id: str) -> dict[str, Any]:
    reply = await http.post(
        "/api/emergency/rollback",
        json={"beforeIncident": incident_id, "confirm": True, "reason": "bad deploy"},
    )
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


async def test_a_reopened_incident_rolls_back_to_before_its_reopening(
    http: httpx.AsyncClient,
) -> None:
    """The incident was fixed, a backup taken after the fix, and writes acknowledged; then it
    reopened. The rollback went back to before its first failure, past the backup after the
    fix, and the writes made since were gone from the live state."""
    before = await http.post("/api/emergency/backups/create", json={"type": "full_system"})
    await asyncio.sleep(0.05)
    incident_id = await budget_incident(http)
    first = await rollback_before(http, incident_id)
    assert first["backupId"] == before.json()["backupId"]
    done = {"resolution": "fixed the budget agent"}
    assert (
        await http.post(f"/api/emergency/incidents/{incident_id}/resolve", json=done)
    ).is_success
    fixed = await http.post("/api/emergency/backups/create", json={"type": "full_system"})
    assert fixed.status_code == 200, fixed.text
    await asyncio.sleep(0.05)
    assert await budget_incident(http) == incident_id  # the same cause: reopened
    for _ in range(100):  # the pipeline reopens it off the request path
        found = (await http.get(f"/api/emergency/incidents/{incident_id}")).json()
        if found["reopenCount"] == 1:
            break
        await asyncio.sleep(0.05)
    again = await rollback_before(http, incident_id)
    assert again["backupId"] == fixed.json()["backupId"]


async def test_a_rollback_before_an_incident_never_takes_a_safety_snapshot(
    http: httpx.AsyncClient,
) -> None:
    """A rollback's safety snapshot is the newest snapshot once it is done, but holds the
    state that rollback put aside: taken by the next rollback before an incident, it brought
    that state back."""
    await http.post("/chat", json={"message": "spent $5 on lunch", "userId": "cy"})
    good = await http.post("/api/emergency/backups/create", json={"type": "full_system"})
    await asyncio.sleep(0.05)
    first = await rollback_before(http, await budget_incident(http))
    assert first["backupId"] == good.json()["backupId"] and first["safetyBackupId"]
    await asyncio.sleep(0.05)
    workout = await failed_call_incident(http, "workout", "network", "make me a workout plan")
    second = await rollback_before(http, workout)
    assert second["backupId"] == good.json()["backupId"], second


async def test_a_later_rollback_never_brings_back_the_state_an_earlier_one_put_aside(
    http: httpx.AsyncClient,
) -> None:
    """An incident's emergency backup, taken before its rollback, holds the state that
    rollback put aside; the next incident's rollback took it, the newest snapshot before that
    incident, and brought the put-aside state back over everything since."""
    good = await http.post("/api/emergency/backups/create", json={"type": "full_system"})
    await asyncio.sleep(0.05)
    budget = await budget_incident(http)
    await http.post("/chat", json={"message": "spent $5 on lunch", "userId": "cy"})
    taken = await http.post(
        "/api/emergency/backups/create", json={"type": "full_system", "reason": "emergency"}
    )
    assert taken.status_code == 200, taken.text
    first = await rollback_before(http, budget)
    assert first["backupId"] == good.json()["backupId"]
    await asyncio.sleep(0.05)
    workout = await failed_call_incident(http, "workout", "network", "make me a workout plan")
    second = await rollback_before(http, workout)
    assert second["backupId"] == good.json()["backupId"], (second, taken.json())


async def test_a_rollback_whose_record_was_not_written_says_so_in_its_reply(
    settings: Settings, tmp_path: Path
) -> None:
    """The note of the record restic could not write was dropped for the notes of what the
    system state puts back after a rollback ("no breaker isolations to restore")."""
    wrapper = restic_failing_on(tmp_path, "rollback.json")
    async with (
        backups_app(settings, restic_binary=str(wrapper)) as application,
        asgi_client(application) as http,
    ):
        taken = await http.post("/api/emergency/backups/create", json={"type": "full_system"})
        body = {"backupId": taken.json()["backupId"], "confirm": True, "reason": "x"}
        reply = await http.post("/api/emergency/rollback", json=body)
        # Not known here as written (before: this replica kept its record in memory, so the
        # late write never came from it): the trail's word of the swap stands for it.
        unwritten = await application.state.runtime.rollbacks.unwritten()
        assert [m.restored for m in unwritten] == [taken.json()["backupId"]], unwritten
    assert reply.status_code == 200, reply.text
    notes = reply.json()["restored"]
    assert any("record in the repository was not written" in n for n in notes), notes


async def test_a_final_backup_cut_by_its_bound_names_the_setting(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The final backup's bound is the operator's to raise: its log line names it."""
    wrapper = slow_restic(tmp_path, "backup", seconds=4)
    async with backups_app(
        settings, restic_binary=str(wrapper), shutdown_backup_timeout_s=1
    ) as application:
        assert application.state.runtime.backups.manager is not None
    failed = [r.getMessage() for r in caplog.records if "final backup failed" in r.getMessage()]
    assert failed and "ERS_SHUTDOWN_BACKUP_TIMEOUT_S=1" in failed[0], failed
    assert "did not finish within 1 s" in failed[0], failed


async def test_a_rollback_drops_the_cached_answers_given_before_it(
    http: httpx.AsyncClient,
) -> None:
    """Before: with the budget agent failing after a rollback of budgets, chat served its
    last good answer, which told the figures the rollback had put aside."""
    taken = await http.post("/api/emergency/backups/create", json={"type": "budgets"})
    assert taken.status_code == 200, taken.text
    await http.post("/chat", json={"message": "spent $55 on groceries", "userId": "ann"})
    assert "$55.00" in await budget_left(http)  # the last good answer, now cached
    body = {"backupId": taken.json()["backupId"], "confirm": True, "reason": "bad import"}
    rolled = await http.post("/api/emergency/rollback", json=body | {"components": ["budgets"]})
    assert rolled.status_code == 200, rolled.text
    assert "cached answers given before the rollback dropped: 1" in rolled.json()["restored"]
    fault = {"errorType": "database", "component": "budget", "count": 5}
    assert (await http.post("/api/emergency/simulate-error", json=fault)).status_code == 200
    assert "$55.00" not in await budget_left(http)


async def test_a_rollback_to_before_an_incident_can_be_previewed_first(
    http: httpx.AsyncClient,
) -> None:
    """Before: the test rollback took a snapshot id only, so the snapshot a rollback
    ``beforeIncident`` would take could not be seen before it ran."""
    before = await http.post("/api/emergency/backups/create", json={"type": "full_system"})
    await asyncio.sleep(0.05)
    incident_id = await failed_call_incident(http, "budget", "network", "budget report")
    after = await http.post("/api/emergency/backups/create", json={"type": "full_system"})
    assert after.status_code == 200, after.text
    body = {"beforeIncident": incident_id, "components": ["budgets"]}
    preview = await http.post("/api/emergency/backups/test-rollback", json=body)
    assert preview.status_code == 200, preview.text
    assert preview.json()["backupId"] == before.json()["backupId"]
    rolled = await http.post(
        "/api/emergency/rollback", json=body | {"confirm": True, "reason": "bad deploy"}
    )
    assert rolled.json()["backupId"] == preview.json()["backupId"]
    both = body | {"backupId": before.json()["backupId"]}
    refused = await http.post("/api/emergency/backups/test-rollback", json=both)
    assert refused.status_code == 422 and "exactly one of" in refused.text, refused.text


async def test_a_rollback_ends_the_emergency_backup_cooldown(
    http: httpx.AsyncClient, backup_app: FastAPI
) -> None:
    """Before: an emergency backup asked for after a rollback was answered with the one
    taken before it, which holds the state the rollback put aside, as "the state from before
    any further damage"; no snapshot held the live state."""
    backups = backup_app.state.runtime.backups
    taken = await http.post("/api/emergency/backups/create", json={"type": "budgets"})
    await http.post("/chat", json={"message": "spent $55 on groceries", "userId": "ann"})
    first = await backups.emergency("a critical incident")
    assert first.taken, first
    covered = await backups.emergency("another, within the cooldown")
    assert not covered.taken and "within the cooldown" in covered.detail, covered
    body = {"backupId": taken.json()["backupId"], "confirm": True, "reason": "bad import"}
    rolled = await http.post("/api/emergency/rollback", json=body | {"components": ["budgets"]})
    assert rolled.status_code == 200, rolled.text
    after = await backups.emergency("an incident after the rollback")
    assert after.taken, after


async def test_the_list_marks_the_components_of_a_snapshot_a_rollback_put_aside(
    http: httpx.AsyncClient,
) -> None:
    """Before: a snapshot holding the state a rollback put aside looked like any other in
    the list, so one picked by its time brought that state back."""
    first = await http.post("/api/emergency/backups/create", json={"type": "budgets"})
    await http.post("/chat", json={"message": "spent $55 on groceries", "userId": "ann"})
    aside = await http.post("/api/emergency/backups/create", json={"type": "budgets"})
    whole = await http.post("/api/emergency/backups/create", json={"type": "full_system"})
    body = {"backupId": first.json()["backupId"], "confirm": True, "reason": "bad import"}
    rolled = await http.post("/api/emergency/rollback", json=body | {"components": ["budgets"]})
    assert rolled.status_code == 200, rolled.text
    listed = {
        b["backupId"]: b for b in (await http.get("/api/emergency/backups")).json()["backups"]
    }
    assert listed[aside.json()["backupId"]]["putAside"] == ["budgets"]
    assert listed[first.json()["backupId"]]["putAside"] == []
    # Of the whole state's snapshot only budgets were put aside: its other parts are live.
    assert listed[whole.json()["backupId"]]["putAside"] == ["budgets"]
    safety = [b for b in listed.values() if b["reason"] == "pre-rollback"]
    assert safety and not any(b["putAside"] for b in safety)  # said by their reason
