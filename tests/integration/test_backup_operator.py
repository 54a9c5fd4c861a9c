"""What an operator meets with ``ers backup`` against a real ``ers serve`` and real restic: the
service's own restic never turns a person's request away, a lock held by another process is
reported for the operation it stopped, the printed undo of a rollback runs as printed, a
second ``init`` says nothing changed, and ``ers status`` says when backups are unreachable."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider

from backup import BackupManager
from backup.offsite import OffsiteCopier, OffsiteRepository
from service.backups.offsite import OffsiteMetrics, copy_once
from tests.conftest import ErsProcess, fail_the_budget_agent_once, start_ers
from tests.integration.test_cli import BACKUPS_ON, cli_env, ers, served_with_backups

pytestmark = pytest.mark.integration


async def test_test_rollbacks_wait_for_the_services_own_checks_instead_of_failing(
    manager: BackupManager,
) -> None:
    snapshot = await manager.create(None, "manual")
    assert snapshot.snapshot_id
    stop = asyncio.Event()

    async def checks() -> int:
        # `restic check` holds the repository's exclusive lock for most of its run, as
        # the schedule's forget, prune and check do.
        count = 0
        while not stop.is_set():
            assert (await manager.check()).ok
            count += 1
        return count

    checking = asyncio.create_task(checks())
    try:
        # Before: most of these met a check's lock and failed with RepositoryLocked.
        for _ in range(6):
            preview = await manager.test_rollback(snapshot.snapshot_id, ["budgets"])
            assert preview.ok
    finally:
        stop.set()
        checks_run = await checking
    assert checks_run >= 2  # the test rollbacks ran among checks


async def test_checks_and_the_offsite_copy_wait_for_each_other_instead_of_failing(
    manager: BackupManager, tmp_path: Path
) -> None:
    assert (await manager.create(None, "manual")).snapshot_id
    password = tmp_path / "offsite.pw"
    password.write_text("offsite-password-5e1d")
    destination = OffsiteRepository(str(tmp_path / "offsite-repo"), password)
    copier = OffsiteCopier(manager.restic, destination, timeout=120, cache_dir=tmp_path / "c")
    meters = MeterProvider()
    metrics = OffsiteMetrics(meters.get_meter("test"), interval_s=3600)
    stop = asyncio.Event()

    async def copies() -> int:
        # `restic copy` shares the source repository; a check wants it alone.
        count = 0
        while not stop.is_set():
            assert await copy_once(copier, metrics, manager.sharing_repository())
            count += 1
        return count

    assert await copy_once(copier, metrics)  # the destination exists from here on
    copying = asyncio.create_task(copies())
    try:
        for _ in range(4):
            assert (await manager.check()).ok
            await asyncio.sleep(0.2)  # room for a copy to start before the next check
    finally:
        stop.set()
        copies_run = await copying
        meters.shutdown()
    assert copies_run >= 2  # the checks ran among copies


service = served_with_backups("ers-operator")


@pytest.fixture
def env(service: ErsProcess, tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path, service.url)


def budgets_file(service: ErsProcess) -> Path:
    return service.log_path.parent / "data" / "budgets.sqlite3"


def test_the_printed_undo_of_a_rollback_runs_as_printed(
    env: dict[str, str], service: ErsProcess
) -> None:
    created = ers(env, "backup", "create", "-o", "json")
    assert created.returncode == 0, created.stderr
    backup_id = created.stdout.split('"backupId": "')[1].split('"')[0]
    # A change since, so the rollback's safety snapshot is a new one of budgets alone.
    httpx.post(
        f"{service.url}/chat",
        json={"message": "set my food budget to $250", "userId": "undo"},
        timeout=30,
    ).raise_for_status()
    rolled = ers(
        env, "backup", "rollback", backup_id, "--components", "budgets",
        "--reason", "bad data", "--yes",
    )  # fmt: skip
    assert rolled.returncode == 0, rolled.stderr
    undo = next(line.strip() for line in rolled.stdout.splitlines() if "--yes" in line)
    command = shlex.split(undo)
    assert command[:3] == ["ers", "backup", "rollback"] and "--components" in command, undo
    safety = command[3]

    # The safety snapshot holds budgets alone: test-rollback and rollback of it without
    # --components take what it holds (before: refused, naming the components it lacks).
    previewed = ers(env, "backup", "test-rollback", safety)
    assert previewed.returncode == 0, previewed.stderr
    assert "budgets" in previewed.stdout and "conversations" not in previewed.stdout

    undone = ers(env, *command[1:])
    assert undone.returncode == 0, undone.stderr
    assert f"to snapshot {safety}" in undone.stdout

    # Both rollbacks are in the audit trail, newest first, with their reasons, each after the
    # entries of its start and of its swap.
    audit = ers({**env, "COLUMNS": "200"}, "audit", "--limit", "6")  # a row a line
    assert audit.returncode == 0, audit.stderr
    lines = audit.stdout.splitlines()
    words = ("rollback", "rollback_swapped", "rollback_started")
    actions = [a for line in lines for a in words if f"  {a}  " in line]
    assert actions == list(words) * 2, audit.stdout
    rows = [line for line in lines if "  rollback  " in line]
    assert "reason undo the rollback to" in rows[0] and "reason bad data" in rows[1], rows
    one = ers(env, "audit", "--limit", "1")
    assert one.returncode == 0 and "1 entry, newest first" in one.stdout, one.stdout


def test_a_second_init_says_the_repository_was_already_in_use(env: dict[str, str]) -> None:
    first = ers(env, "backup", "init")
    assert first.returncode == 0, first.stderr
    again = ers(env, "backup", "init")
    assert again.returncode == 0, again.stderr
    assert "was already the one in use" in again.stdout, again.stdout
    assert "replaces" not in again.stdout


@contextlib.contextmanager
def lock_held_outside(workdir: Path, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The service's repository locked exclusively by another process until the block ends."""
    fifo = tmp_path / "new-password"
    os.mkfifo(fifo)
    # `restic key passwd` takes the repository's exclusive lock, then waits to read the new
    # password from the pipe, which nothing writes to: a lock held by another process.
    holder = subprocess.Popen(
        ["restic", "key", "passwd", "--new-password-file", str(fifo)],
        env={
            **os.environ,
            "RESTIC_REPOSITORY": str(workdir / "repo"),
            "RESTIC_PASSWORD_FILE": str(workdir / "restic-password"),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(400):  # bounded: until restic has written its lock
            if any((workdir / "repo" / "locks").iterdir()):
                break
            time.sleep(0.025)
        yield holder
    finally:
        holder.send_signal(signal.SIGINT)  # restic removes its lock on the way out
        with contextlib.suppress(subprocess.TimeoutExpired):
            holder.wait(timeout=30)
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=30)


def test_a_lock_held_outside_the_service_fails_the_test_rollback_by_name(
    env: dict[str, str], service: ErsProcess, tmp_path: Path
) -> None:
    created = ers(env, "backup", "create", "-o", "json")
    assert created.returncode == 0, created.stderr
    backup_id = created.stdout.split('"backupId": "')[1].split('"')[0]
    with lock_held_outside(service.log_path.parent, tmp_path) as holder:
        refused = ers(env, "backup", "test-rollback", backup_id, "--components", "budgets")
        assert refused.returncode == 5, refused.stderr
        assert "test rollback failed: the restic repository is in use by PID" in refused.stderr
        assert f"PID {holder.pid}" in refused.stderr
        assert "backup failed" not in refused.stderr
    again = ers(env, "backup", "test-rollback", backup_id, "--components", "budgets")
    assert again.returncode == 0, again.stderr


def test_a_failed_rollback_opens_an_incident_that_names_its_failure(
    env: dict[str, str], service: ErsProcess, tmp_path: Path
) -> None:
    created = ers(env, "backup", "create", "--type", "budgets", "-o", "json")
    assert created.returncode == 0, created.stderr
    backup_id = json.loads(created.stdout)["backupId"]
    with lock_held_outside(service.log_path.parent, tmp_path):
        failed = ers(
            env, "backup", "rollback", backup_id, "--components", "budgets",
            "--reason", "locked out", "--yes",
        )  # fmt: skip
    assert failed.returncode == 5, failed.stderr
    assert "rollback failed at step" in failed.stderr, failed.stderr

    def from_rollbacks() -> list[dict[str, object]]:
        listed = httpx.get(f"{service.url}/api/emergency/incidents", timeout=30).json()
        return [i for i in listed["incidents"] if i["spanName"] == "POST /api/emergency/rollback"]

    for _ in range(200):  # bounded: incidents are classified off the request path
        if found := from_rollbacks():
            break
        time.sleep(0.05)
    # Before: an incident of component "ers", type "503", with an empty message.
    (incident,) = found
    assert incident["component"] == "backups", incident
    assert incident["exceptionType"] == "RollbackFailed", incident
    message = str(incident["message"])
    assert message.startswith("rollback failed at step") and "in use by PID" in message, incident


def test_a_rollback_whose_reason_is_blank_is_refused_and_touches_nothing(
    env: dict[str, str], service: ErsProcess
) -> None:
    created = ers(env, "backup", "create", "--type", "budgets", "-o", "json")
    assert created.returncode == 0, created.stderr
    backup_id = json.loads(created.stdout)["backupId"]
    audit_before = ers(env, "audit", "-o", "json").stdout
    for offline in ([], ["--offline"]):
        refused = ers(
            env, "backup", "rollback", backup_id, "--components", "budgets",
            "--reason", "   ", "--yes", *offline,
        )  # fmt: skip
        # Before: rolled back, with a reason of three spaces in the audit trail.
        assert refused.returncode == 2, refused.stderr
        assert "--reason" in refused.stderr and "audit trail" in refused.stderr, refused.stderr
    answer = httpx.post(
        f"{service.url}/api/emergency/rollback",
        json={"backupId": backup_id, "confirm": True, "reason": " \t\n", "components": ["budgets"]},
        timeout=60,
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].startswith("reason: "), answer.text
    assert ers(env, "audit", "-o", "json").stdout == audit_before


def test_a_retry_after_a_rollback_of_the_conversations_says_the_rollback_may_be_why(
    env: dict[str, str], service: ErsProcess
) -> None:
    created = ers(env, "backup", "create", "--type", "conversations", "-o", "json")
    assert created.returncode == 0, created.stderr
    before = json.loads(created.stdout)["backupId"]
    chat = {"message": "I spent 44 dollars on groceries", "userId": "retry-after-rollback"}
    headers = {"Idempotency-Key": "after-rollback-1"}
    first = httpx.post(f"{service.url}/chat", json=chat, headers=headers, timeout=30)
    assert first.status_code == 200, first.text
    rolled = ers(
        env, "backup", "rollback", before, "--components", "conversations",
        "--reason", "bad replies", "--yes",
    )  # fmt: skip
    assert rolled.returncode == 0, rolled.stderr
    retry = httpx.post(f"{service.url}/chat", json=chat, headers=headers, timeout=30)
    assert retry.status_code == 409, retry.text
    detail = retry.json()["detail"]
    assert "nothing was recorded again" in detail, detail
    # Before: "(only the newest idempotency_keys_max keys are)", which sent the operator to
    # a setting that had nothing to do with it.
    assert "rolled back" in detail, detail


def test_a_retry_after_a_rollback_of_the_budgets_answers_what_the_budgets_hold(
    env: dict[str, str], service: ErsProcess
) -> None:
    user = "retry-after-budgets-rollback"

    def spend(dollars: int, key: str) -> httpx.Response:
        chat = {"message": f"I spent {dollars} dollars on groceries", "userId": user}
        headers = {"Idempotency-Key": key}
        return httpx.post(f"{service.url}/chat", json=chat, headers=headers, timeout=30)

    def expenses() -> list[int]:
        with contextlib.closing(sqlite3.connect(budgets_file(service))) as conn:
            query = "SELECT amount_cents FROM expenses WHERE user_id = ? ORDER BY id"
            return [row[0] for row in conn.execute(query, (user,))]

    kept = spend(31, "budgets-kept")
    assert kept.status_code == 200 and "Recorded $31.00" in kept.text, kept.text
    created = ers(env, "backup", "create", "--type", "budgets", "-o", "json")
    assert created.returncode == 0, created.stderr
    put_aside = spend(57, "budgets-put-aside")
    assert put_aside.status_code == 200 and "Recorded $57.00" in put_aside.text, put_aside.text
    rolled = ers(
        env, "backup", "rollback", json.loads(created.stdout)["backupId"],
        "--components", "budgets", "--reason", "bad expenses", "--yes",
    )  # fmt: skip
    assert rolled.returncode == 0, rolled.stderr
    assert "wrote to budgets forgotten: 2" in rolled.stdout, rolled.stdout
    assert expenses() == [3100]
    # Before: both replayed their first reply; the $57 one said "Recorded" for an expense
    # the rollback had put aside, and was not recorded again.
    again = spend(57, "budgets-put-aside")
    assert again.status_code == 200 and "Recorded $57.00" in again.text, again.text
    assert "Idempotent-Replayed" not in again.headers
    once = spend(31, "budgets-kept")
    assert once.status_code == 409 and "nothing was recorded again" in once.text, once.text
    assert expenses() == [3100, 5700]
    replayed = spend(57, "budgets-put-aside")
    assert replayed.headers.get("Idempotent-Replayed") == "true", replayed.headers


def test_a_rollback_of_the_conversations_after_one_of_the_budgets_brings_back_no_reply_of_it(
    env: dict[str, str], service: ErsProcess
) -> None:
    # How a whole state is rolled back where each snapshot holds one component.
    user = "budgets-then-conversations"
    chat = {"message": "I spent 45 dollars on paint", "userId": user}
    headers = {"Idempotency-Key": "budgets-then-conversations"}

    def snapshot(component: str) -> str:
        created = ers(env, "backup", "create", "--type", component, "-o", "json")
        assert created.returncode == 0, created.stderr
        return str(json.loads(created.stdout)["backupId"])

    def rollback(backup_id: str, component: str) -> str:
        rolled = ers(
            env, "backup", "rollback", backup_id, "--components", component,
            "--reason", "walk", "--yes",
        )  # fmt: skip
        assert rolled.returncode == 0, rolled.stderr
        return rolled.stdout

    def expenses() -> int:
        with contextlib.closing(sqlite3.connect(budgets_file(service))) as conn:
            query = "SELECT count(*) FROM expenses WHERE user_id = ?"
            return int(conn.execute(query, (user,)).fetchone()[0])

    budgets = snapshot("budgets")
    first = httpx.post(f"{service.url}/chat", json=chat, headers=headers, timeout=30)
    assert first.status_code == 200 and "Recorded $45.00" in first.text, first.text
    conversations = snapshot("conversations")  # holds the reply
    rollback(budgets, "budgets")
    said = rollback(conversations, "conversations")
    assert "wrote to budgets or profiles forgotten" in said, said
    assert expenses() == 0
    # Before: the conversations' snapshot brought the reply back, and it was replayed.
    retry = httpx.post(f"{service.url}/chat", json=chat, headers=headers, timeout=30)
    assert retry.status_code == 200 and "Recorded $45.00" in retry.text, retry.text
    assert "Idempotent-Replayed" not in retry.headers
    assert expenses() == 1


def test_status_names_why_backups_are_unavailable(tmp_path: Path) -> None:
    service = start_ers(
        tmp_path / "ers", env={**BACKUPS_ON, "ERS_RESTIC_BINARY": str(tmp_path / "no-restic")}
    )
    try:
        shown = ers(cli_env(tmp_path, service.url), "status")
    finally:
        service.stop()
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if line.startswith("backups"))
    # Before: "backups  0, last never", as if no backup had ever been made.
    assert "unavailable: " in row and "last never" not in row, shown.stdout


def test_a_rollback_to_before_an_incident_by_its_id(tmp_path: Path) -> None:
    # A service of its own: an incident of the same failure opened by another test would
    # be the one this failure counts on, with an older start.
    service = start_ers(tmp_path / "ers", env=BACKUPS_ON)
    try:
        service.wait_for_backups()
        env = cli_env(tmp_path, service.url)
        created = ers(env, "backup", "create", "--type", "budgets", "-o", "json")
        assert created.returncode == 0, created.stderr
        before = json.loads(created.stdout)["backupId"]
        with httpx.Client(base_url=service.url, timeout=30) as http:
            fail_the_budget_agent_once(http)
            deadline = time.monotonic() + 20
            while not (found := http.get("/api/emergency/incidents").json()["incidents"]):
                assert time.monotonic() < deadline, "no incident"
                time.sleep(0.1)
        (incident,) = [i["id"] for i in found]

        rollback = ["backup", "rollback", "--components", "budgets", "--reason", "r", "--yes"]
        for args, words in (
            ([], "name the snapshot to roll back to"),
            ([before, "--before-incident", incident], "not both"),
            (["--before-incident", incident, "--offline"], "offline, name the snapshot"),
        ):
            refused = ers(env, *rollback, *args)
            assert refused.returncode == 2 and words in refused.stderr, refused.stderr
        unknown = ers(env, *rollback, "--before-incident", "INC_1700000000000_abcdef")
        assert unknown.returncode == 4, unknown.stderr

        # Its snapshot previewed first, as a test rollback of it.
        preview = ["backup", "test-rollback", "--components", "budgets"]
        previewed = ers(env, *preview, "--before-incident", incident, "-o", "json")
        assert previewed.returncode == 0, previewed.stderr
        assert json.loads(previewed.stdout)["backupId"] == before
        refused = ers(env, *preview)
        assert refused.returncode == 2, refused.stderr
        assert "name the snapshot to roll back to" in refused.stderr

        rolled = ers(env, *rollback, "--before-incident", incident, "-o", "json")
        assert rolled.returncode == 0, rolled.stderr
        assert json.loads(rolled.stdout)["backupId"] == before
    finally:
        service.stop()
