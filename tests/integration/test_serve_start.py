"""`ers serve` started where it cannot run, or stopped during its first start: what the
operator reads, and what the next start finds."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, start_ers
from tests.processes import ers_env, serve


def test_a_port_in_use_is_refused_in_one_line_before_any_state_is_made(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = subprocess.run(
            [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1"]
            + ["--port", str(port)],
            cwd=tmp_path,
            env=ers_env(tmp_path, ERS_BACKUPS_ENABLED="true"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr  # unusable settings, as for every other one
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(f"ers: cannot listen on 127.0.0.1:{port}"), done.stderr
    assert "Address already in use" in lines[-1]
    assert "--port" in lines[-1] and "ERS_PORT" in lines[-1]
    assert "ERS ready" not in done.stderr
    # Nothing was started: no component file, so the next start is still a first start
    # and creates the backup repository.
    assert not list((tmp_path / "data").glob("*.sqlite3"))
    assert not (tmp_path / "repo").exists()


def test_a_data_dir_that_cannot_be_made_is_refused_in_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    for data_dir in ("/dev/null", str(tmp_path / "afile" / "sub"), "/proc/ers-data"):
        done = serve(tmp_path, "--port", str(free_port()), ERS_DATA_DIR=data_dir)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith("ers: invalid setting 'data_dir'") and data_dir in line, line
        offline = subprocess.run(
            [sys.executable, "-m", "service.cli", "backup", "--offline", "list"],
            cwd=tmp_path,
            env=ers_env(tmp_path, ERS_DATA_DIR=data_dir),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert offline.returncode == 2, offline.stderr
        # Offline, a data directory that is not there is none to read (it is not made).
        missing = f"ers: the data directory {data_dir} does not exist"
        assert offline.stderr.startswith(("ers: invalid setting 'data_dir'", missing))
        assert len(offline.stderr.splitlines()) == 1, offline.stderr


def test_a_port_or_host_given_on_the_command_line_is_used_even_when_zero_or_empty(
    tmp_path: Path,
) -> None:
    # Port 0 was taken for "not given": the service listened on ERS_PORT instead.
    zero = serve(tmp_path, "--port", "0", ERS_PORT=str(free_port()))
    assert zero.returncode == 2, zero.stderr
    assert zero.stderr.strip().splitlines() == [
        "ers: invalid setting 'port': Input should be greater than or equal to 1 (given 0; "
        "allowed: a whole number from 1 to 65535)"
    ]
    empty = serve(tmp_path, "--host", "", ERS_PORT=str(free_port()))
    assert empty.returncode == 2, empty.stderr
    assert "--host" in empty.stderr and "Traceback" not in empty.stderr


def test_a_first_start_stopped_before_it_made_the_repository_is_a_first_start_again(
    tmp_path: Path,
) -> None:
    backups = {"ERS_BACKUPS_ENABLED": "true", "ERS_BACKUP_SCHEDULE_ENABLED": "false"}
    # The first start cannot make the repository (restic is not there yet) and is killed:
    # it has made the component files all the same.
    first = start_ers(tmp_path, env={**backups, "ERS_RESTIC_BINARY": str(tmp_path / "none")})
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert (tmp_path / "data" / "budgets.sqlite3").exists()
    assert not (tmp_path / "repo").exists()

    again = start_ers(tmp_path, env=backups)
    try:
        again.wait_for_backups(timeout=60)
        with httpx.Client(base_url=again.url, timeout=60) as http:
            made = http.post("/api/emergency/backups/create", json={"reason": "first"})
            assert made.status_code == 200, made.text
            critical = http.get("/api/emergency/incidents", params={"severity": "critical"})
            assert critical.json()["total"] == 0, critical.text
    finally:
        assert again.stop() == 0
    assert "none is created implicitly" not in again.log()
    # Recorded now: a later start goes by the record, as any other start does.
    assert (tmp_path / "data" / "restic-repository.json").exists()
    assert not (tmp_path / "data" / ".ers-first-start").exists()


def test_an_auth_header_written_with_its_value_is_refused_without_showing_the_value(
    tmp_path: Path,
) -> None:
    # The whole header line in auth_header, as it is written in a curl command.
    (tmp_path / "ers.yaml").write_text(
        "agents:\n"
        "  helper:\n"
        "    kind: http\n"
        "    url: http://127.0.0.1:9/chat\n"
        "    auth_header: 'Authorization: Bearer sk-live-4f9a2c'\n"
    )
    done = serve(tmp_path, "--port", str(free_port()))
    assert done.returncode == 2, done.stderr
    assert "sk-live-4f9a2c" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        "ers: invalid setting 'agents.helper.auth_header': not an HTTP header name (it holds "
        "':'); write only the name, with letters, digits and '-' (e.g. Authorization, "
        "X-Api-Key), and the whole value in the file auth_file names"
    ]


def test_a_config_file_that_is_not_yaml_names_the_line_and_the_problem(tmp_path: Path) -> None:
    # An agent added below agent_routes, indented as the agents above it.
    (tmp_path / "ers.yaml").write_text(
        "agents:\n"
        "  workout: {kind: python, factory: workout}\n"
        "agent_routes: {workout: workout}\n"
        "  helper:\n"
        "    kind: http\n"
        "    url: http://127.0.0.1:9/chat?key=sk-live-4f9a2c\n"
    )
    done = serve(tmp_path, "--port", str(free_port()))
    assert done.returncode == 2, done.stderr
    assert "sk-live-4f9a2c" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        "ers: ers.yaml: not valid YAML at line 4, column 3 (expected <block end>, but found "
        "'<block mapping start>', while parsing a block mapping that starts at line 1); check "
        "the indentation, quotes and brackets there"
    ]


def test_an_openai_url_that_ends_with_v1_is_refused_naming_the_base_url(tmp_path: Path) -> None:
    # The base_url an OpenAI SDK takes ends with /v1; ERS adds /v1/chat/completions itself.
    (tmp_path / "ers.yaml").write_text(
        "agents:\n"
        "  workout: {kind: python, factory: workout}\n"
        "  gpt:\n"
        "    kind: http\n"
        "    url: http://127.0.0.1:9/v1\n"
        "    contract: openai\n"
        "    model: gpt-4o-mini\n"
        "    fallbacks: [workout]\n"
        "agent_routes: {workout: gpt}\n"
    )
    done = serve(tmp_path, "--port", str(free_port()))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "ers: invalid setting 'agents.gpt.url': its path ends with /v1, which ERS adds itself "
        "for contract 'openai'; write the server's base URL (http://127.0.0.1:9)"
    ]


def test_an_agent_named_like_a_state_store_is_refused(tmp_path: Path) -> None:
    # The budgets store's outage is an incident of component "budgets": an agent of that
    # name would be isolated for it.
    (tmp_path / "ers.yaml").write_text(
        "agents:\n  budgets: {kind: python, factory: budget}\nagent_routes: {budget: budgets}\n"
    )
    done = serve(tmp_path, "--port", str(free_port()))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "ers: invalid setting 'agents.budgets': 'budgets' names a component of ERS itself, and "
        "its incidents would isolate the agent; choose another name (e.g. budgets-agent)"
    ]


def test_an_auth_file_that_is_a_device_is_refused_instead_of_read_without_end(
    tmp_path: Path,
) -> None:
    (tmp_path / "ers.yaml").write_text(
        "agents:\n  helper: {kind: http, url: 'http://127.0.0.1:9/chat', auth_file: /dev/zero}\n"
    )
    done = serve(tmp_path, "--port", str(free_port()))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "ers: invalid setting 'agents.helper.auth_file': /dev/zero is not a small regular "
        "file; write the whole value of its Authorization header to a file of its own"
    )


def test_a_yaml_yes_or_no_for_a_number_is_refused_not_taken_for_one_or_zero(
    tmp_path: Path,
) -> None:
    # YAML reads yes/no/on/off as booleans: taken as numbers, max_backups: yes kept one
    # snapshot per component and chat_starts_per_turn: off lifted the limit.
    for line, key in (
        ("max_backups: yes", "max_backups"),
        ("chat_starts_per_turn: off", "chat_starts_per_turn"),
        ("idempotency_keys_max: true", "idempotency_keys_max"),
        ("backup_interval_minutes: {budgets: on}", "backup_interval_minutes.budgets"),
        ("agent_breakers: {budget: {open_duration_s: on}}", "agent_breakers"),
        (
            "agents: {coach: {kind: http, url: 'http://127.0.0.1:9/chat', timeout_s: yes}}",
            "agents.coach.timeout_s",
        ),
    ):
        (tmp_path / "ers.yaml").write_text(line + "\n")
        done = serve(tmp_path, "--port", str(free_port()))
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"ers: invalid setting '{key}'"), lines
        assert "must be a number" in lines[0], lines


def test_a_blank_variable_is_refused_as_empty_whatever_its_setting(tmp_path: Path) -> None:
    # As an unset compose variable gives: the line says it is empty, not that "" is not a
    # valid number, and how to get the default.
    for variable, key in (
        ("ERS_MAX_BACKUPS", "max_backups"),
        ("ERS_AGENT_TIMEOUT_S", "agent_timeout_s"),
        ("ERS_EMERGENCY_ROLLBACK_ENABLED", "emergency_rollback_enabled"),
        ("ERS_BACKUP_INTERVAL_MINUTES__BUDGETS", "backup_interval_minutes.budgets"),
    ):
        done = serve(tmp_path, "--port", str(free_port()), **{variable: " "})
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            f"ers: invalid setting '{key}': empty; set it, or leave the variable out for the "
            f"default (set by ${variable})"
        ]


def test_a_setting_a_variable_made_wrong_names_the_variable(tmp_path: Path) -> None:
    """The settings file had it right; before, nothing said the environment had set it."""
    (tmp_path / "ers.yaml").write_text(
        "agents: {helper: {kind: http, url: 'http://127.0.0.1:9/chat', timeout_s: 5}}\n"
    )
    done = serve(tmp_path, "--port", str(free_port()), ERS_AGENTS__HELPER__TIMEOUT_S="abc")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("ers: invalid setting 'agents.helper.timeout_s': "), line
    assert line.endswith(" (set by $ERS_AGENTS__HELPER__TIMEOUT_S)"), line


def test_a_program_still_running_after_a_kill_does_not_hold_the_port_of_the_next_start(
    tmp_path: Path,
) -> None:
    # restic, but its restores take their time: one is still running when ERS is killed, as
    # a large restore or a slow remote repository would be.
    restic = shutil.which("restic")
    assert restic is not None, "restic is not installed"
    restore_pid = tmp_path / "restore.pid"
    slow = tmp_path / "slow-restic"
    slow.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = restore ]; then echo $$ > {restore_pid}; exec sleep 600; fi\n'
        f'exec {restic} "$@"\n'
    )
    slow.chmod(0o755)
    env = {
        "ERS_BACKUPS_ENABLED": "true",
        "ERS_BACKUP_SCHEDULE_ENABLED": "false",
        "ERS_RESTIC_BINARY": str(slow),
    }
    port = free_port()
    first = start_ers(tmp_path / "ers", env=env, port=port)
    try:
        first.wait_for_backups()
        created = httpx.post(f"{first.url}/api/emergency/backups/create", json={}, timeout=60)
        backup_id = created.raise_for_status().json()["backupId"]

        def test_rollback() -> None:
            with contextlib.suppress(httpx.HTTPError):  # ERS is killed while it answers
                httpx.post(
                    f"{first.url}/api/emergency/backups/test-rollback",
                    json={"backupId": backup_id},
                    timeout=60,
                )

        asking = threading.Thread(target=test_rollback)
        asking.start()
        for _ in range(600):  # bounded: until the restore runs
            if restore_pid.exists() and restore_pid.read_text().strip():
                break
            time.sleep(0.05)
        assert restore_pid.exists(), "the test rollback's restore never started"
        first.stop(signal.SIGKILL)
        asking.join()
        # Before: the restore had inherited the listening socket and held the port, and the
        # start failed with "cannot listen on 127.0.0.1:<port> (Address already in use)".
        again = start_ers(tmp_path / "ers", env=env, port=port)
        again.stop()
    finally:
        first.stop(signal.SIGKILL)
        if restore_pid.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(restore_pid.read_text()), signal.SIGKILL)


@pytest.mark.parametrize(
    "template",
    [
        "https://t.example/{trace_id.real}",  # before: AttributeError, a traceback, exit 1
        "https://t.example/{trace_id}/{trace_id.__class__}",  # before: started, links garbled
        "https://t.example/{trace_id:>40}",
    ],
)
def test_a_trace_link_template_with_another_field_is_refused_in_one_line(
    tmp_path: Path, template: str
) -> None:
    done = serve(tmp_path, "--port", str(free_port()), ERS_TRACE_URL_TEMPLATE=template)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "ers: invalid setting 'trace_url_template': a URL with {trace_id} where the trace id "
        "goes and no other braces (set by $ERS_TRACE_URL_TEMPLATE)"
    ), done.stderr


def test_a_damaged_archive_of_kept_traces_is_moved_aside_and_the_service_starts(
    tmp_path: Path,
) -> None:
    """Before: uvicorn's traceback of the failed start-up over a file that is never backed
    up, and nothing said what to do. Its log files go with it: a new archive must not take up
    an old log."""
    data = tmp_path / "data"
    data.mkdir()
    archive = data / "kept-traces.sqlite3"
    archive.write_bytes(b"not a database, overwritten" * 200)
    Path(f"{archive}-wal").write_bytes(b"an old log")

    proc = start_ers(tmp_path)
    try:
        ready = httpx.get(f"{proc.url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        [moved] = [
            p
            for p in data.iterdir()
            if p.name.startswith("kept-traces.sqlite3.damaged-")
            and not p.name.endswith(("-wal", "-shm"))
        ]
        assert moved.read_bytes() == b"not a database, overwritten" * 200
        assert Path(f"{moved}-wal").read_bytes() == b"an old log"
        with contextlib.closing(sqlite3.connect(archive)) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert f"moved to {moved}" in proc.log()
        assert "Traceback" not in proc.log()
    finally:
        proc.stop()


def test_an_address_this_machine_does_not_have_is_named_as_the_fix() -> None:
    """It said to stop what listens on the port, or to choose another one: the address is
    what is wrong (TEST-NET-1, which no interface here has)."""
    from service.cli.main import listening_socket
    from service.settings import SettingsError

    with pytest.raises(SettingsError) as refused:
        listening_socket("192.0.2.1", free_port())
    line = str(refused.value)
    assert "Cannot assign requested address" in line, line
    assert line.endswith("use an address of this machine with --host / ERS_HOST"), line
