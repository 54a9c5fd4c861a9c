"""``ers backup --offline`` on PostgreSQL as an operator meets it: the real ``ers`` command,
the real restic and a real server, interrupted, on a database that goes away, with the
settings wrong."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from service.incidents.service import MIGRATIONS as INCIDENT_STATE
from service.stores import Stores
from tests.pg import PostgresServer, apply_migrations
from tests.processes import free_port
from tests.store_writes import add_expense, opened

pytestmark = pytest.mark.integration

ERS = [sys.executable, "-m", "service.cli"]
WAIT_S = 120  # for a state to be reached, never a measure of how long something took


@dataclass
class OfflineSite:
    """A PostgreSQL database with ERS's schemas, a repository and the settings of both."""

    url: str
    env: dict[str, str]
    cwd: Path

    def ers(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*ERS, *args],
            env=self.environment(**env),
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=180,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        """In a session of its own, so that a Ctrl-C can reach it and its programs alone, and
        with Ctrl-C heeded as in a terminal: a test run started in the background (`&` in a
        script) ignores SIGINT, which its children inherit, and the command never saw it."""
        return subprocess.Popen(
            [*ERS, *args],
            env=self.environment(),
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    def environment(self, **env: str) -> dict[str, str]:
        kept = {k: v for k, v in os.environ.items() if not k.startswith("ERS_")}
        return {k: v for k, v in {**kept, **self.env, **env}.items() if v}

    def expenses(self) -> int:
        with psycopg.connect(self.url) as conn:
            row = conn.execute("SELECT count(*) FROM ers_budgets.expenses").fetchone()
        assert row is not None
        return int(row[0])

    def trail(self) -> list[tuple[str, str, dict[str, Any]]]:
        with psycopg.connect(self.url) as conn:
            rows = conn.execute(
                "SELECT actor, action, detail FROM ers_incidents.audit ORDER BY id"
            ).fetchall()
        return [(a, b, d if isinstance(d, dict) else json.loads(d)) for a, b, d in rows]


async def add_expenses(url: str, count: int) -> None:
    async with opened(Stores.on_postgres(url)) as stores:
        for number in range(count):
            await add_expense(stores, "u1", "food", 1000 + number)


@pytest.fixture
async def site(tmp_path: Path, pg_url: str) -> OfflineSite:
    return await a_site(tmp_path, pg_url)


async def a_site(tmp_path: Path, pg_url: str) -> OfflineSite:
    """One expense in a budgets snapshot, two more added since."""
    apply_migrations(pg_url, INCIDENT_STATE)
    await add_expenses(pg_url, 1)
    (tmp_path / "data").mkdir()
    (tmp_path / "restic-password").write_text("a test password\n")
    env = {
        "ERS_ENV": "test",
        "ERS_DATABASE_URL": pg_url,
        "ERS_DATA_DIR": str(tmp_path / "data"),
        "ERS_RESTIC_REPOSITORY": str(tmp_path / "repo"),
        "ERS_RESTIC_PASSWORD_FILE": str(tmp_path / "restic-password"),
    }
    made = OfflineSite(pg_url, env, tmp_path)
    for command in (["init"], ["create", "--type", "budgets", "-o", "json"]):
        done = made.ers("backup", "--offline", *command)
        assert done.returncode == 0, done.stderr
    made.env["SNAPSHOT"] = json.loads(done.stdout)["backupId"]
    await add_expenses(pg_url, 2)
    return made


def wait_until(found: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not found():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.05)


def one_row(url: str, query: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query).fetchone() is not None


@pytest.fixture
def held(site: OfflineSite) -> Iterator[Callable[[str], None]]:
    """Another session holding a lock on the live expenses table, until the test ends."""
    conn = psycopg.connect(site.url)
    try:
        yield lambda statement: conn.execute(statement) and None
    finally:
        conn.rollback()
        conn.close()


def rollback_waiting_for_a_writer(site: OfflineSite) -> subprocess.Popen[str]:
    """An offline rollback of budgets, once it waits for a writer's lock (held by the test)
    to hold off the other writers."""
    rolling = site.start(
        "backup", "--offline", "rollback", site.env["SNAPSHOT"], "--reason", "r", "--yes"
    )
    wait_until(
        lambda: one_row(
            site.url,
            "SELECT 1 FROM pg_locks WHERE NOT granted"
            " AND relation = 'ers_budgets.expenses'::regclass",
        ),
        "the rollback waiting for the writer",
    )
    return rolling


def interrupt(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Ctrl-C, as a terminal sends it: to the command and every program it runs."""
    os.killpg(process.pid, signal.SIGINT)
    return process.communicate(timeout=WAIT_S)


def test_a_ctrl_c_after_the_swap_committed_reports_the_rollback_done_and_records_it(
    site: OfflineSite, held: Callable[[str], None]
) -> None:
    """Before: exit 130 and not a word, the safety snapshot named nowhere and only the
    rollback's start in the trail, though the data was the snapshot's."""
    snapshot = site.env["SNAPSHOT"]
    # A reader of the live table: the old schema's drop, after the commit, waits for it.
    held("SELECT count(*) FROM ers_budgets.expenses")
    rolling = site.start(
        "backup", "--offline", "rollback", snapshot, "--reason", "r", "--yes", "-o", "json"
    )
    wait_until(
        lambda: one_row(
            site.url, "SELECT 1 FROM pg_namespace WHERE nspname LIKE 'ers\\_budgets\\_\\_old\\_%'"
        ),
        "the swap commit",
    )
    out, err = interrupt(rolling)

    assert rolling.returncode == 0, err
    reply = json.loads(out)
    assert reply["backupId"].startswith(snapshot) and reply["safetyBackupId"], reply
    assert reply["undoCommand"].startswith(f"ers backup rollback {reply['safetyBackupId'][:8]}")
    assert site.expenses() == 1
    (actor, action, detail) = site.trail()[-1]
    assert (actor, action) == ("offline", "rollback")
    assert detail["safetyBackupId"] == reply["safetyBackupId"] and detail["error"] is None


def test_a_ctrl_c_before_the_swap_says_the_data_was_left_unchanged_and_records_it(
    site: OfflineSite, held: Callable[[str], None]
) -> None:
    """Before: exit 130 and not a word, and the next start called it a kill or a crash."""
    # A writer's open transaction: the rollback waits to hold off the other writers.
    held("LOCK TABLE ers_budgets.expenses IN ROW EXCLUSIVE MODE")
    rolling = rollback_waiting_for_a_writer(site)
    out, err = interrupt(rolling)

    assert rolling.returncode == 130, err
    assert out == ""
    assert err.strip().splitlines() == [
        "ers: the rollback was interrupted before its swap: the live data was left unchanged"
    ]
    assert site.expenses() == 3
    (actor, action, detail) = site.trail()[-1]
    assert (actor, action) == ("offline", "rollback")
    assert "left unchanged" in detail["error"]


def test_a_test_rollback_the_settings_keep_from_restoring_fails_naming_them_not_the_snapshot(
    site: OfflineSite,
) -> None:
    """Before: "the snapshot's copy fails its check", exit 0, for pg_restore's refusal of
    the URL's options."""
    url = site.url + ("&" if "?" in site.url else "?") + "connect_timeout=abc"
    tested = site.ers(
        "backup", "--offline", "test-rollback", site.env["SNAPSHOT"], ERS_DATABASE_URL=url
    )

    assert tested.returncode == 1, tested.stdout
    assert tested.stdout == ""
    lines = tested.stderr.splitlines()
    assert len(lines) == 1, tested.stderr
    (line,) = lines
    assert 'invalid integer value "abc" for connection option "connect_timeout"' in line
    assert "ERS_DATABASE_URL" in line and "snapshot" not in line


@pytest.mark.parametrize(
    "command",
    [
        ["list"],
        ["test-rollback", "SNAPSHOT"],
        ["test-rollback", "SNAPSHOT", "--components", "budgets"],
        ["rollback", "SNAPSHOT", "--reason", "r", "--yes"],
    ],
)
def test_a_postgresql_repository_without_its_database_url_says_so_and_makes_nothing(
    site: OfflineSite, command: list[str]
) -> None:
    """Before: "holds no component that can be rolled back", "unknown component(s) budgets",
    and SQLite files, a lock and a working folder made in the data directory."""
    data_dir = Path(site.env["ERS_DATA_DIR"])
    before = sorted(data_dir.iterdir())
    args = [site.env["SNAPSHOT"] if a == "SNAPSHOT" else a for a in command]
    done = site.ers("backup", "--offline", *args, ERS_DATABASE_URL="")

    assert done.returncode == 2, done.stdout
    (line,) = done.stderr.splitlines()
    assert "are a PostgreSQL service's (tag backend:postgresql)" in line
    assert "ERS_DATABASE_URL is not set" in line
    assert sorted(data_dir.iterdir()) == before


def test_a_mistyped_data_directory_is_refused_on_postgresql_too(site: OfflineSite) -> None:
    """Before: `list` made the directory, and a repository record in it."""
    typo = site.cwd / "dat"
    done = site.ers("backup", "--offline", "list", ERS_DATA_DIR=str(typo))

    assert done.returncode == 2
    assert f"the data directory {typo} does not exist" in done.stderr
    assert not typo.exists()


# The offline commands that take the state for themselves, and so must reach the server.
CHANGES = [["create"], ["rollback", "SNAPSHOT", "--reason", "r", "--yes"], ["prune"], ["init"]]


def with_netloc(url: str, *, password: str | None = None, port: int | None = None) -> str:
    parts = urlsplit(url)
    login = f"{parts.username}:{password or parts.password}"
    return urlunsplit(parts._replace(netloc=f"{login}@{parts.hostname}:{port or parts.port}"))


def refusals(site: OfflineSite, url: str) -> list[str]:
    """The one line each change says when ERS_DATABASE_URL is ``url``."""
    lines = []
    for command in CHANGES:
        args = [site.env["SNAPSHOT"] if a == "SNAPSHOT" else a for a in command]
        done = site.ers("backup", "--offline", *args, ERS_DATABASE_URL=url)
        assert done.returncode == 1, done.stdout
        (line,) = done.stderr.splitlines()
        lines.append(line)
    return lines


def test_a_refused_password_is_named_as_such_and_never_shown(site: OfflineSite) -> None:
    """Before: "check that the server is running and that ERS_DATABASE_URL names the right
    host", the rest of the advice cut off."""
    wrong = "not-the-password-9f2c"
    for line in refusals(site, with_netloc(site.url, password=wrong)):
        assert 'refused the password of role "ers_test", or has no such role' in line
        assert "put that role's password in ERS_DATABASE_URL" in line
        assert "server is running" not in line
        assert "stop the service" not in line  # no replica to stop: the password is wrong
        assert wrong not in line and str(urlsplit(site.url).password) not in line


def test_a_server_that_is_not_running_is_named_as_such(site: OfflineSite) -> None:
    """Before: the same advice as for a refused password, the server's own words within it."""
    port = free_port()
    for line in refusals(site, with_netloc(site.url, port=port)):
        assert f"the PostgreSQL server at postgresql://ers_test@127.0.0.1:{port}/" in line
        assert "is not running (nothing accepts connections there): start it" in line
        assert str(urlsplit(site.url).password) not in line


def test_a_missing_restic_password_file_is_named_and_not_made(site: OfflineSite) -> None:
    """Before: "the password in '...' does not open the repository", and a new random
    password written there, which every later command then tried."""
    missing = site.cwd / "gone.pass"
    for _ in range(2):
        done = site.ers("backup", "--offline", "list", ERS_RESTIC_PASSWORD_FILE=str(missing))
        assert done.returncode == 1, done.stdout
        (line,) = done.stderr.splitlines()
        assert line.startswith(f"ers: the restic password file '{missing}' does not exist: ")
        assert "fix the password file setting" in line
    assert not missing.exists()


async def test_a_server_stopped_during_a_rollback_says_so_in_its_lines_alone(
    tmp_path: Path, own_server: PostgresServer
) -> None:
    """Before: the connection pool's warnings came first, several lines of libpq's for each
    reconnect it tried ("error connecting in 'ers-offline-audit' ... Is the server running")."""
    site = await a_site(tmp_path, own_server.create_database())
    writer = psycopg.connect(site.url)  # the rollback waits for this writer's lock
    try:
        writer.execute("LOCK TABLE ers_budgets.expenses IN ROW EXCLUSIVE MODE")
        rolling = rollback_waiting_for_a_writer(site)
        own_server.halt()
        out, err = rolling.communicate(timeout=WAIT_S)
    finally:
        writer.close()

    assert rolling.returncode == 1, out
    lines = err.splitlines()
    assert all(line.startswith("ers: ") for line in lines), err
    assert lines[-1].startswith("ers: rollback failed at step 'pause-writers'")
    assert lines[-1].endswith("the live data was left unchanged")
    assert lines[0].startswith("ers: the rollback is not in the audit trail")
    assert str(urlsplit(site.url).password) not in err


def test_a_missing_repository_offline_is_told_to_run_the_offline_init(site: OfflineSite) -> None:
    """Before: `ers backup init`, which asks the service that is not running."""
    done = site.ers("backup", "--offline", "list", ERS_RESTIC_REPOSITORY=str(site.cwd / "moved"))

    assert done.returncode == 1, done.stdout
    (line,) = done.stderr.splitlines()
    assert "that held the backups is gone from" in line
    assert line.endswith("`ers backup --offline init` starts a new, empty repository instead")


def test_a_drill_names_the_snapshot_each_component_was_restored_from(site: OfflineSite) -> None:
    """Before: "restore drill passed: newest snapshot <one of them>" for the four drilled,
    and the incidents' snapshots were never restored: the drill now checks all five."""
    done = site.ers("backup", "--offline", "create", "-o", "json")
    assert done.returncode == 0, done.stderr
    made = {
        c: s["backupId"][:8] for s in json.loads(done.stdout)["snapshots"] for c in s["components"]
    }
    drill = site.ers("backup", "--offline", "drill")

    assert drill.returncode == 0, drill.stderr
    header, *rows, verdict = drill.stdout.splitlines()
    assert header.split()[:2] == ["COMPONENT", "SNAPSHOT"]
    shown = dict(row.split()[:2] for row in rows)
    components = ("conversations", "budgets", "profiles", "system_state", "incidents")
    assert shown == {c: made[c] for c in components}
    assert verdict.startswith("restore drill passed: 5 snapshots, each component's newest, ")


def test_an_init_names_the_repository_by_its_short_id(site: OfflineSite) -> None:
    """Before: the 64 characters of its full id."""
    full = json.loads(site.ers("backup", "--offline", "init", "-o", "json").stdout)["repositoryId"]
    again = site.ers("backup", "--offline", "init")

    assert again.returncode == 0, again.stderr
    assert len(full) == 64
    assert again.stdout == f"repository {full[:8]} was already the one in use; nothing changed\n"
