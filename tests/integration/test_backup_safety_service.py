"""Backup safety through a real ERS process (uvicorn) and the real restic: the repository is
created only on the first start of a brand-new data directory or by `ers backup init`, one
that vanishes is a critical incident and stops backups by name, the snapshot list follows the
repository, and the reason given is the reason tag."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ErsProcess, start_ers
from tests.integration.test_backup_cli import ers

pytestmark = pytest.mark.integration

BACKUPS_ON = {
    "ERS_BACKUPS_ENABLED": "true",
    "ERS_BACKUP_SCHEDULE_ENABLED": "false",
    # The on-demand health reads below are the only ones that matter here.
    "ERS_HEALTH_CHECK_INTERVAL_S": "3600",
}


def restic(work: Path, *args: str) -> str:
    done = subprocess.run(
        ["restic", *args],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")},
            "RESTIC_REPOSITORY": str(work / "repo"),
            "RESTIC_PASSWORD_FILE": str(work / "restic-password"),
        },
        cwd=work / "data",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def tags_of(work: Path, snapshot_id: str) -> list[str]:
    listed = json.loads(restic(work, "snapshots", "--json"))
    [snapshot] = [s for s in listed if s["id"].startswith(snapshot_id)]
    return list(snapshot["tags"])


def cli_env(work: Path) -> dict[str, str]:
    return {
        "ERS_DATA_DIR": str(work / "data"),
        "ERS_RESTIC_REPOSITORY": str(work / "repo"),
        "ERS_RESTIC_PASSWORD_FILE": str(work / "restic-password"),
    }


def wait_for(probe: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll `probe` a bounded number of times until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := probe():
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout:g} s")


def repository_check(http: httpx.Client) -> dict[str, Any]:
    return dict(http.get("/api/emergency/health").json()["checks"]["repository"])


def reported_repository_status(http: httpx.Client) -> str | None:
    """The repository check's status in the health monitor's last report, as /metrics shows
    it (what `ers status`, the system state and the alert rules read; no check is run)."""
    for line in http.get("/metrics").text.splitlines():
        if line.startswith('ers_health_check_status{check="repository"') and line.endswith(" 1.0"):
            return line.split('status="')[1].split('"')[0]
    return None


def test_the_health_report_tells_the_repository_outcome_without_waiting_an_interval(
    tmp_path: Path,
) -> None:
    """The monitor's first report is made while the repository is still being opened
    (degraded, "connecting"); with checks an hour apart, the report must still change as
    soon as the repository answers, or is found missing."""
    fresh = start_ers(tmp_path / "fresh", env=BACKUPS_ON)
    try:
        with httpx.Client(base_url=fresh.url, timeout=30) as http:
            wait_for(
                lambda: reported_repository_status(http) == "healthy",
                "the report says the new repository is reachable",
            )
    finally:
        assert fresh.stop() == 0

    work = tmp_path / "existing"
    start_ers(work).stop()  # state without a repository: it needs `ers backup init`
    service = start_ers(work, env=BACKUPS_ON)
    try:
        with httpx.Client(base_url=service.url, timeout=30) as http:
            wait_for(
                lambda: reported_repository_status(http) == "unhealthy",
                "the report names the missing repository",
            )
            assert http.get("/api/emergency/status").json()["health"]["overall"] == "unhealthy"
    finally:
        assert service.stop() == 0


def test_existing_state_gets_no_repository_until_init_and_keeps_the_reason_given(
    tmp_path: Path,
) -> None:
    work = tmp_path / "ers"
    start_ers(work).stop()  # a run without backups leaves state behind
    assert any((work / "data").glob("*.sqlite3"))

    service = start_ers(work, env=BACKUPS_ON)
    try:
        with httpx.Client(base_url=service.url, timeout=120) as http:
            check = wait_for(
                lambda: (c := repository_check(http))["status"] == "unhealthy" and c,
                "the repository check names the missing repository",
            )
            assert "ers backup init" in check["reason"]
            refused = http.post("/api/emergency/backups/create", json={})
            assert refused.status_code == 503 and "ers backup init" in refused.json()["detail"]
            assert not (work / "repo").exists()

            initialised = ers(["backup", "init", "--url", service.url, "--json"], {}, tmp_path)
            assert initialised.returncode == 0, initialised.stderr
            assert json.loads(initialised.stdout)["created"] is True
            service.wait_for_backups()
            assert repository_check(http)["status"] == "healthy"

            made = http.post("/api/emergency/backups/create", json={"reason": "before-upgrade"})
            assert made.status_code == 200, made.text
            assert "reason:before-upgrade" in tags_of(work, made.json()["backupId"])
            for bad, words in (("before upgrade", "no spaces"), ("x" * 65, "at most 64")):
                reply = http.post("/api/emergency/backups/create", json={"reason": bad})
                assert reply.status_code == 422 and words in reply.text, reply.text

            chat = {"message": "set my food budget to $100", "userId": "ann"}
            assert http.post("/chat", json=chat).status_code == 200
            by_cli = ers(
                ["backup", "create", "--reason", "after.upgrade", "--url", service.url, "--json"],
                {},
                tmp_path,
            )
            assert by_cli.returncode == 0, by_cli.stderr
            assert "reason:after.upgrade" in tags_of(work, json.loads(by_cli.stdout)["backupId"])
            bad_cli = ers(
                ["backup", "create", "--reason", "a,b", "--url", service.url], {}, tmp_path
            )
            assert bad_cli.returncode == 2 and "no spaces, commas" in bad_cli.stderr
    finally:
        assert service.stop() == 0


def test_a_repository_moved_away_under_the_service_is_critical_and_never_recreated(
    tmp_path: Path,
) -> None:
    work = tmp_path / "ers"
    service = start_ers(work, env=BACKUPS_ON)  # brand-new data directory: creates it
    try:
        service.wait_for_backups()
        record = json.loads((work / "data" / "restic-repository.json").read_text())
        assert record["id"] == json.loads(restic(work, "cat", "config"))["id"]
        with httpx.Client(base_url=service.url, timeout=120) as http:
            made = http.post("/api/emergency/backups/create", json={})
            assert made.status_code == 200, made.text

            (work / "repo").rename(tmp_path / "moved-away")
            health = http.get("/api/emergency/health")
            assert health.status_code == 503
            check = health.json()["checks"]["repository"]
            assert check["status"] == "unhealthy" and "gone" in check["reason"]

            def incident() -> dict[str, Any] | None:
                found = http.get("/api/emergency/incidents", params={"component": "backups"})
                return next(iter(found.json()["incidents"]), None)

            # `ers status` says backups are unavailable and why, not the count it last knew.
            backups = wait_for(
                lambda: (
                    (b := http.get("/api/emergency/status").json()["backups"]).get("error") and b
                ),
                "the status names the lost repository",
            )
            assert "gone" in backups["error"] and backups["available"] == 0

            opened = wait_for(incident, "the lost repository opened an incident")
            assert opened["exceptionType"] == "RepositoryMissing"
            assert opened["classification"]["severity"] == "critical"

            refused = http.post("/api/emergency/backups/create", json={})
            assert refused.status_code == 503 and "gone" in refused.json()["detail"]
            # The refused backup counts on the same incident, not on one of its own that
            # names only the route and its status code; nor are the 503s that
            # wait_for_backups met while the repository was being reached incidents.
            wait_for(
                lambda: (i := incident()) and i["count"] >= 2,
                "the refused backup was counted on the lost repository's incident",
            )
            every = http.get("/api/emergency/incidents").json()["incidents"]
            assert [i["component"] for i in every] == ["backups"], [
                (i["spanName"], i["message"], i["count"], i["exceptionType"]) for i in every
            ]
    finally:
        assert service.stop() == 0  # its final backup fails by name, nothing is created
    assert not (work / "repo").exists()

    listed = ers(["backup", "list", "--offline", "--json"], cli_env(work), tmp_path)
    assert listed.returncode == 1 and "gone" in listed.stderr, listed.stdout
    assert not (work / "repo").exists()

    restarted = start_ers(work, env=BACKUPS_ON)
    try:
        with httpx.Client(base_url=restarted.url, timeout=120) as http:
            wait_for(
                lambda: "gone" in repository_check(http)["reason"],
                "the restarted service names the lost repository",
            )
    finally:
        restarted.stop()
    assert not (work / "repo").exists()


def backed_up_elsewhere(work: Path) -> str:
    """A snapshot made by another process (restic itself), tagged as ERS tags its own."""
    restic(work, "backup", "--tag", "ers,component:budgets,reason:x", "budgets.sqlite3")
    listed = json.loads(restic(work, "snapshots", "--json", "--tag", "reason:x"))
    return str(listed[-1]["id"])


def listed_ids(service: ErsProcess) -> set[str]:
    reply = httpx.get(f"{service.url}/api/emergency/backups", timeout=30).json()
    return {b["backupId"] for b in reply["backups"]}


def test_the_snapshot_list_follows_what_other_processes_do(tmp_path: Path) -> None:
    work = tmp_path / "ers"
    service = start_ers(work, env={**BACKUPS_ON, "ERS_BACKUP_REFRESH_INTERVAL_S": "3600"})
    try:
        service.wait_for_backups()
        with httpx.Client(base_url=service.url, timeout=120) as http:
            assert http.post("/api/emergency/backups/create", json={}).status_code == 200
            first = wait_for(lambda: http.post("/api/emergency/backups/refresh").json(), "list")
            [ours] = [b["backupId"] for b in first["backups"]]

            theirs = backed_up_elsewhere(work)
            assert theirs not in listed_ids(service)  # nothing re-read the list yet
            details = http.get(f"/api/emergency/backups/{theirs[:8]}")
            assert details.status_code == 200, details.text  # looked for once more, found
            assert details.json()["backupId"] == theirs

            restic(work, "forget", ours)
            assert ours in listed_ids(service)
            refreshed = ers(
                ["backup", "list", "--refresh", "--url", service.url, "--json"], {}, tmp_path
            )
            assert refreshed.returncode == 0, refreshed.stderr
            assert {b["backupId"] for b in json.loads(refreshed.stdout)["backups"]} == {theirs}
            assert listed_ids(service) == {theirs}
            unknown = http.get("/api/emergency/backups/deadbeefdeadbeef")
            assert unknown.status_code == 404
    finally:
        service.stop()


def test_the_snapshot_list_is_refreshed_on_a_schedule(tmp_path: Path) -> None:
    work = tmp_path / "ers"
    service = start_ers(work, env={**BACKUPS_ON, "ERS_BACKUP_REFRESH_INTERVAL_S": "10"})
    try:
        service.wait_for_backups()
        theirs = backed_up_elsewhere(work)
        wait_for(lambda: theirs in listed_ids(service), "the scheduled refresh found it", 40)
    finally:
        service.stop()


def test_a_backup_asked_for_on_unchanged_state_is_still_a_snapshot_with_its_reason(
    tmp_path: Path,
) -> None:
    """An operator who asks for a backup before an upgrade gets a snapshot tagged with that
    reason even when nothing changed since the last scheduled one: without it the list has no
    `before-upgrade` to roll back to, and the reply's backupId was null."""
    work = tmp_path / "ers"
    service = start_ers(work, env=BACKUPS_ON)
    try:
        service.wait_for_backups()
        with httpx.Client(base_url=service.url, timeout=120) as http:
            first = http.post("/api/emergency/backups/create", json={"reason": "nightly"})
            assert first.status_code == 200 and first.json()["backupId"], first.text
            # Nothing written since: the state is the one the first snapshot holds.
            again = http.post("/api/emergency/backups/create", json={"reason": "before-upgrade"})
            assert again.status_code == 200, again.text
            made = again.json()
            assert made["backupId"] and made["skipped"] == [], made
            assert not first.json()["backupId"].startswith(made["backupId"][:8])
            assert "reason:before-upgrade" in tags_of(work, made["backupId"])
            one = http.post(
                "/api/emergency/backups/create", json={"reason": "one", "type": "budgets"}
            )
            assert one.status_code == 200 and one.json()["components"] == ["budgets"], one.text
            assert "reason:one" in tags_of(work, one.json()["backupId"])
    finally:
        assert service.stop() == 0
