"""The installed ``ers`` console script against a real ``ers serve`` (uvicorn on a free
loopback port): tables for people, ``-o json``/``-o yaml`` parsed back, the documented exit
codes, piping into ``head``, a missing token file and a server that is not there."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ErsProcess, free_port, start_ers
from tests.e2e.test_alert_delivery import payload
from tests.integration.test_late_failure_trace import TOKEN as INTAKE_TOKEN
from tests.integration.test_late_failure_trace import send_failure
from tests.pg import PostgresServer

ERS = Path(sys.executable).with_name("ers")
SHORT_ID = re.compile(r"\b[0-9a-f]{8}\b")
BACKUPS_ON = {"ERS_BACKUPS_ENABLED": "true", "ERS_BACKUP_SCHEDULE_ENABLED": "false"}


def cli_env(workdir: Path, url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment an operator's shell would have: no ERS_* but what is set here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ERS_", "OTEL_"))}
    env.update(
        ERS_ENV="test",
        ERS_DATA_DIR=str(workdir / "data"),
        ERS_RESTIC_REPOSITORY=str(workdir / "repo"),
        ERS_RESTIC_PASSWORD_FILE=str(workdir / "restic-password"),
    )
    if url:
        env["ERS_URL"] = url
    env.update(extra)
    return env


def ers(env: dict[str, str], *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    assert ERS.exists(), f"the ers console script is not installed next to {sys.executable}"
    options: dict[str, object] = {"capture_output": True, **kwargs}
    return subprocess.run([str(ERS), *args], env=env, text=True, timeout=180, **options)  # type: ignore[call-overload]


def one_plain_line(result: subprocess.CompletedProcess[str]) -> str:
    """A failure is one line on stderr starting with `ers:`, nothing on stdout."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ers: "), result.stderr
    assert result.stdout == "", result.stdout
    return lines[0]


def on_a_terminal(env: dict[str, str], *args: str) -> str:
    """Run with stderr on a pseudo-terminal, as in an operator's shell; what was drawn there."""
    controller, terminal = pty.openpty()
    drawn = bytearray()

    def read() -> None:
        with contextlib.suppress(OSError):  # EIO once the command has closed its side
            while chunk := os.read(controller, 65536):
                drawn.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        result = ers(
            {**env, "TERM": "xterm-256color", "COLUMNS": "120"},
            *args,
            stderr=terminal,
            capture_output=False,
            stdout=subprocess.PIPE,
        )
    finally:
        os.close(terminal)
    reader.join(timeout=10)
    os.close(controller)
    assert result.returncode == 0, drawn.decode(errors="replace")[-2000:]
    return drawn.decode(errors="replace")


def served_with_backups(name: str):  # noqa: ANN201
    """A module's `service` fixture: one `ers serve` with backups on, shared by its tests."""

    @pytest.fixture(scope="module")
    def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ErsProcess]:
        proc = start_ers(tmp_path_factory.mktemp(name), env=BACKUPS_ON)
        try:
            proc.wait_for_backups()
            yield proc
        finally:
            proc.stop()

    return service


service = served_with_backups("ers-cli")


@pytest.fixture
def env(service: ErsProcess, tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path, service.url)


def test_every_listing_is_a_table_and_the_same_data_as_json_and_yaml(
    env: dict[str, str], service: ErsProcess
) -> None:
    table = ers(env, "breakers", "list")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["AGENT", "STATE", "UNTIL"]
    assert [r.split()[0] for r in rows[:4]] == ["budget", "nutrition", "router", "workout"]
    assert not table.stdout.lstrip().startswith("{")

    as_json = json.loads(ers(env, "-o", "json", "breakers", "list").stdout)
    after = json.loads(ers(env, "breakers", "list", "-o", "json").stdout)
    as_yaml = yaml.safe_load(ers(env, "breakers", "list", "-o", "yaml").stdout)
    assert set(as_json["breakers"]) == set(after["breakers"]) == set(as_yaml["breakers"])
    assert as_json["totals"]["total"] == 4

    incidents = ers(env, "incidents", "list")
    assert incidents.returncode == 0, incidents.stderr
    assert incidents.stdout.split()[:3] == ["ID", "STATUS", "SEVERITY"]
    scripted = json.loads(ers(env, "incidents", "list", "-o", "json").stdout)
    assert isinstance(scripted["incidents"], list)
    assert f"{scripted['total']} incidents" in incidents.stdout


def test_incidents_list_pages_and_says_how_many_it_shows(
    env: dict[str, str], service: ErsProcess
) -> None:
    messages = {"budget": "budget report", "nutrition": "plan my meals", "workout": "workout plan"}
    with httpx.Client(base_url=service.url, timeout=10) as http:
        try:
            for agent, message in messages.items():  # a real failure of each, injected
                http.post(
                    "/api/emergency/simulate-error",
                    json={"component": agent, "errorType": "system", "count": 1},
                ).raise_for_status()
                http.post("/chat", json={"message": message, "userId": "pages"})
            for _ in range(100):
                if http.get("/api/emergency/incidents").json()["total"] >= 3:
                    break
                time.sleep(0.1)
            listing_pages(env)
        finally:  # the service is shared with the next tests: leave no isolation behind
            active = http.get("/api/emergency/incidents", params={"status": "active"})
            for incident in active.json()["incidents"]:
                http.post(
                    f"/api/emergency/incidents/{incident['id']}/resolve",
                    json={"resolution": "the test is over"},
                )


def listing_pages(env: dict[str, str]) -> None:
    total = json.loads(ers(env, "incidents", "list", "-o", "json").stdout)["total"]
    assert total >= 3
    first = ers(env, "incidents", "list", "--limit", "2")
    assert first.returncode == 0, first.stderr
    assert f"1-2 of {total} incidents, newest first" in first.stdout  # before: "N incidents"
    rest = ers(env, "incidents", "list", "--limit", "2", "--offset", "2", "-o", "json")
    ids = [i["id"] for i in json.loads(rest.stdout)["incidents"]]
    shown = [
        i["id"] for i in json.loads(ers(env, "incidents", "list", "-o", "json").stdout)["incidents"]
    ]
    assert ids == shown[2:4]
    future = ers(env, "incidents", "list", "--since", "2999-01-01T00:00:00Z")
    assert future.returncode == 0 and "0 incidents" in future.stdout


def test_backups_print_tables_with_short_ids_and_accept_the_full_id(
    env: dict[str, str], service: ErsProcess, tmp_path: Path
) -> None:
    created = ers(env, "backup", "create", "--reason", "before-upgrade")
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("snapshot "), created.stdout
    short = SHORT_ID.search(created.stdout)
    assert short, created.stdout
    assert "before-upgrade" in created.stdout and "{" not in created.stdout

    listed = ers(env, "backup", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:3] == ["ID", "TIME", "REASON"]
    mine = [r for r in rows if r.startswith(short.group())]
    assert mine and "before-upgrade" in mine[0]
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", mine[0]), mine[0]
    scripted = json.loads(ers(env, "backup", "list", "-o", "json").stdout)
    assert short.group() in [b["backupId"][:8] for b in scripted["backups"]]

    restic = subprocess.run(
        ["restic", "snapshots", "--json"],
        env={
            **os.environ,
            "RESTIC_REPOSITORY": str(service.log_path.parent / "repo"),
            "RESTIC_PASSWORD_FILE": str(service.log_path.parent / "restic-password"),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    full = next(s["id"] for s in json.loads(restic.stdout) if s["short_id"] == short.group())
    assert len(full) == 64
    shown = ers(env, "backup", "show", full)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"snapshot {short.group()} "), shown.stdout
    assert full not in shown.stdout
    assert "budgets.sqlite3" in shown.stdout


def test_test_rollback_shows_rows_per_table_without_internal_tables(
    env: dict[str, str], service: ErsProcess
) -> None:
    created = json.loads(ers(env, "backup", "create", "-o", "json").stdout)
    httpx.post(
        f"{service.url}/chat",
        json={"message": "set my food budget to $400", "userId": "rows"},
        timeout=30,
    ).raise_for_status()
    preview = ers(env, "backup", "test-rollback", created["backupId"], "--components", "budgets")
    assert preview.returncode == 0, preview.stderr
    lines = preview.stdout.splitlines()
    assert lines[1].split() == [
        "COMPONENT", "TABLE", "ROWS", "NOW", "ROWS", "AFTER", "ADDED", "REMOVED", "CHANGED"
    ]  # fmt: skip
    budgets = next(line.split() for line in lines if line.split()[:2] == ["budgets", "budgets"])
    now, after = int(budgets[2]), int(budgets[3])
    # The limit set after the snapshot is the one row the rollback would remove.
    assert now == after + 1 and budgets[4:] == ["0", "1", "0"], preview.stdout
    assert "_probe" not in preview.stdout and "idempotency_keys" not in preview.stdout
    assert "nothing live was touched" in preview.stdout


def test_piping_into_head_ends_quietly(env: dict[str, str]) -> None:
    piped = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {ERS} breakers list | head -1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    assert piped.stdout.split()[0] == "AGENT"
    # A reader that is gone before the first write: the write fails at once.
    for args in (("breakers", "list"), ("incidents", "list", "-o", "json"), ("--help",)):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            closed = ers(env, *args, stdout=write_end, capture_output=False, stderr=subprocess.PIPE)
        finally:
            os.close(write_end)
        assert closed.returncode == 0, (args, closed.stderr)
        assert closed.stderr == "", (args, closed.stderr)


def test_a_missing_token_file_is_one_line_naming_every_way_to_give_the_token(
    env: dict[str, str], tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-token"
    for result in (
        ers(env, "--token-file", str(missing), "breakers", "list"),
        ers(env, "breakers", "reset", "budget", "--token-file", str(missing)),
        ers({**env, "ERS_ADMIN_TOKEN_FILE": str(missing)}, "backup", "list"),
    ):
        assert result.returncode == 2
        line = one_plain_line(result)
        assert str(missing) in line
        for way in ("--token-file", "ERS_ADMIN_TOKEN_FILE", "ERS_ADMIN_TOKEN"):
            assert way in line, line


def test_an_unreachable_server_is_exit_3_and_one_line(tmp_path: Path) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    env = cli_env(tmp_path, nobody)
    for args in (("breakers", "list"), ("backup", "list", "-o", "json"), ("incidents", "list")):
        result = ers(env, *args)
        assert result.returncode == 3, result
        line = one_plain_line(result)
        assert nobody in line and "ERS_URL" in line


def test_a_password_or_query_in_the_url_is_not_shown(tmp_path: Path, env: dict[str, str]) -> None:
    """Before, `--url http://user:pw@host` came back whole in the message, in a terminal's
    scrollback or a CI log, and so did a query's value."""
    port = free_port()
    nobody = ers(cli_env(tmp_path), "--url", f"http://ops:s3cr3t-pw@127.0.0.1:{port}", "status")
    assert nobody.returncode == 3, nobody
    line = one_plain_line(nobody)
    assert "s3cr3t-pw" not in line and f"REDACTED:REDACTED@127.0.0.1:{port}" in line, line
    with_query = ers(env, "--url", env["ERS_URL"] + "/api?key=s3cr3t-key", "status")
    assert with_query.returncode == 2, with_query
    line = one_plain_line(with_query)
    assert "s3cr3t-key" not in line and "/api?key=REDACTED" in line, line
    assert "is no route of ERS" in line, line


def test_another_server_at_the_url_is_one_line_not_its_page(tmp_path: Path) -> None:
    import http.server

    # Python's own file server: a 404 page in HTML for GET, a 501 page for POST.
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0),
        lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path)),
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = cli_env(tmp_path, f"http://127.0.0.1:{server.server_address[1]}")
        missing = ers(env, "status")
        assert missing.returncode == 4, missing
        line = one_plain_line(missing)
        assert "text/html rather than ERS's JSON" in line and "<" not in line, line
        unsupported = ers(env, "backup", "create")
        assert unsupported.returncode == 5, unsupported
        assert "is --url the ERS service" in one_plain_line(unsupported)
    finally:
        server.shutdown()
        server.server_close()


def test_refusals_are_exit_4_and_server_failures_exit_5(env: dict[str, str]) -> None:
    unknown = ers(env, "backup", "show", "deadbeef")
    assert unknown.returncode == 4
    assert "404" in one_plain_line(unknown)
    invalid = ers(env, "incidents", "show", "INC_1")
    assert invalid.returncode == 4 and "422" in one_plain_line(invalid)
    unconfirmed = ers(env, "backup", "rollback", "deadbeef", "--reason", "r")
    assert unconfirmed.returncode == 2 and "--yes" in one_plain_line(unconfirmed)
    # A base URL with a path: the router knows none of the CLI's paths there.
    with_path = ers({**env, "ERS_URL": env["ERS_URL"] + "/api"}, "status")
    assert with_path.returncode == 2
    line = one_plain_line(with_path)
    assert "/api/api/emergency/status is no route of ERS" in line and "base URL" in line, line
    # The command's own query is no secret, and no part of the fault: before, it read
    # `?limit=REDACTED&offset=REDACTED`.
    listed = ers({**env, "ERS_URL": env["ERS_URL"] + "/api"}, "incidents", "list")
    assert listed.returncode == 2
    line = one_plain_line(listed)
    assert "/api/api/emergency/incidents is no route of ERS" in line, line


def test_a_service_without_backups_answers_5xx_as_exit_5(tmp_path: Path) -> None:
    service = start_ers(tmp_path / "ers")  # backups off: the backup routes answer 503
    try:
        result = ers(cli_env(tmp_path, service.url), "backup", "list")
        assert result.returncode == 5
        assert "503" in one_plain_line(result)
    finally:
        service.stop()


def test_an_incident_without_a_protocol_shows_a_dash_for_it(
    tmp_path: Path, ers_process: ErsProcess
) -> None:
    # An alert that names no action opens an incident of its own, with no protocol to run.
    body = payload("firing", "ActiveIncidentsHigh", "0a1b2c3d4e5f", severity="warning")
    with httpx.Client(base_url=ers_process.url, timeout=10) as http:
        assert http.post("/api/emergency/alerts", json=body).status_code == 200
        for _ in range(100):  # bounded: the alert is acted on in the background
            if found := http.get("/api/emergency/incidents").json()["incidents"]:
                break
            time.sleep(0.1)
    (incident,) = found
    shown = ers(cli_env(tmp_path, ers_process.url), "incidents", "show", incident["id"])
    assert shown.returncode == 0, shown.stderr
    assert "protocol: -  traces:" in shown.stdout and "None" not in shown.stdout, shown.stdout


def test_the_admin_token_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    token = "cli-test-token-0123456789abcdef"
    service = start_ers(tmp_path / "ers", env={"ERS_ADMIN_TOKEN": token})
    try:
        env = cli_env(tmp_path, service.url)
        refused = ers(env, "breakers", "disable", "budget")
        assert refused.returncode == 4
        line = one_plain_line(refused)
        assert "401" in line and "ERS_ADMIN_TOKEN" in line and "--token-file" in line
        # A wrong token says which one was sent, not how to give one: it was given.
        wrong = ers({**env, "ERS_ADMIN_TOKEN": "not-" + token}, "breakers", "disable", "budget")
        assert wrong.returncode == 4
        line = one_plain_line(wrong)
        assert line.endswith("the admin token from $ERS_ADMIN_TOKEN is not the one ERS was given")
        assert token not in line
        token_file = tmp_path / "admin-token"
        token_file.write_text(token + "\n")
        by_file = ers(env, "breakers", "disable", "budget", "--token-file", str(token_file))
        assert by_file.returncode == 0, by_file.stderr
        assert token not in by_file.stdout + by_file.stderr
        by_env = ers({**env, "ERS_ADMIN_TOKEN": token}, "breakers", "enable", "budget")
        assert by_env.returncode == 0, by_env.stderr
        by_env_file = ers(
            {**env, "ERS_ADMIN_TOKEN_FILE": str(token_file)}, "-o", "json", "breakers", "list"
        )
        assert json.loads(by_env_file.stdout)["breakers"]["budget"]["state"] == "closed"
    finally:
        service.stop()


def test_a_usage_mistake_is_one_line_naming_the_help(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    for args, words in (
        (("backup", "rollback", "deadbeef", "--components", "wallets"), "invalid choice"),
        (("breakers", "reset"), "the following arguments are required: name"),
        (("nosuch",), "invalid choice: 'nosuch'"),
    ):
        result = ers(env, *args)
        assert result.returncode == 2, result
        line = one_plain_line(result)
        assert words in line, line
        command = " ".join(args[:2]) if args[0] != "nosuch" else ""
        assert line.endswith(f"`{' '.join(('ers', command)).strip()} --help` shows the usage")


def test_help_names_every_subcommand_the_options_and_the_exit_codes(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    top = ers(env, "--help").stdout
    for words in ("ERS_URL", "--token-file", "ERS_ADMIN_TOKEN_FILE", "make run PORT=8100"):
        assert words in top
    assert re.search(r"^\s+3\s+cannot reach", top, re.MULTILINE), top
    for group, subcommands in {
        "incidents": ("list", "show", "acknowledge", "resolve"),
        "backup": ("list", "init", "create", "show", "test-rollback", "rollback", "check"),
        "breakers": ("list", "reset", "force-open", "release", "disable", "enable"),
    }.items():
        text = ers(env, group, "--help").stdout
        for sub in subcommands:
            match = re.search(rf"^\s+{sub}\s*\n?\s+(\S.*)$", text, re.MULTILINE)
            assert match and match.group(1).strip(), f"ers {group} --help: {sub}\n{text}"


def test_offline_backup_takes_offline_before_or_after_the_subcommand_same_shape(
    tmp_path: Path,
) -> None:
    service = start_ers(tmp_path, env=BACKUPS_ON)
    try:
        service.wait_for_backups()
        httpx.post(
            f"{service.url}/chat",
            json={"message": "set my food budget to $100", "userId": "a"},
            timeout=30,
        ).raise_for_status()
        env = cli_env(tmp_path, service.url)
        backup_id = json.loads(ers(env, "backup", "create", "-o", "json").stdout)["backupId"]
        online = json.loads(ers(env, "backup", "test-rollback", backup_id, "-o", "json").stdout)
    finally:
        assert service.stop() == 0
    env = cli_env(tmp_path)
    before = ers(env, "backup", "--offline", "list")
    after = ers(env, "backup", "list", "--offline")
    assert before.returncode == 0 and after.returncode == 0, before.stderr + after.stderr
    assert before.stdout.split()[:3] == ["ID", "TIME", "REASON"]
    assert backup_id[:8] in before.stdout and backup_id[:8] in after.stdout
    # It ends with the live state's size, as the service's list does.
    assert re.search(r", [\d.]+ [KM]?B live$", before.stdout.strip()), before.stdout
    offline = json.loads(
        ers(env, "backup", "--offline", "test-rollback", backup_id, "-o", "json").stdout
    )
    assert set(offline) == set(online)
    assert offline["components"].keys() == online["components"].keys()
    for name, component in online["components"].items():
        assert set(component) == set(offline["components"][name])
        assert component["tables"] == offline["components"][name]["tables"]
    drawn = on_a_terminal(env, "backup", "--offline", "create", "--reason", "progress")
    # The percentage column is drawn only once restic's --json status lines give one.
    assert "backing up" in drawn and re.search(r"\d+%", drawn), drawn[-2000:]
    drill = ers(env, "backup", "--offline", "drill")
    assert drill.returncode == 0, drill.stderr
    assert "restore drill passed" in drill.stdout and "budgets" in drill.stdout
    online_only = ers(env, "backup", "drill")
    assert online_only.returncode == 2 and "--offline drill" in one_plain_line(online_only)
    table = ers(env, "backup", "--offline", "test-rollback", backup_id)
    assert table.returncode == 0 and "budgets" in table.stdout, table.stderr
    db = sqlite3.connect(tmp_path / "data" / "budgets.sqlite3")
    with db:
        db.execute("DELETE FROM budgets")
    db.close()
    rolled = ers(
        env,
        "backup",
        "rollback",
        backup_id,
        "--offline",
        "--components",
        "budgets",
        "--reason",
        "restore",
        "--yes",
    )
    assert rolled.returncode == 0, rolled.stderr
    assert rolled.stdout.startswith(f"rolled back budgets to snapshot {backup_id[:8]}")
    restored = sqlite3.connect(tmp_path / "data" / "budgets.sqlite3")
    assert restored.execute("SELECT count(*) FROM budgets").fetchone() == (1,)
    restored.close()


def test_classify_against_stored_with_the_shipped_rules_finds_no_difference(
    tmp_path: Path,
) -> None:
    from tests.api.test_alert_webhook import FIRING

    service = start_ers(tmp_path, env={"ERS_ALERT_TOKEN": "alert-hook-3f9a"})
    try:
        with httpx.Client(base_url=service.url, timeout=30) as http:
            # An alert's incident: its labels classify it, so the rules' replay leaves it out.
            alert = http.post(
                "/api/emergency/alerts",
                json=FIRING,
                headers={"Authorization": "Bearer alert-hook-3f9a"},
            )
            assert alert.status_code == 200, alert.text
            for kind, agent, message in (
                ("database", "budget", "budget report"),
                ("network", "nutrition", "plan my meals"),
                ("agent", "workout", "plan a workout"),
            ):
                http.post(
                    "/api/emergency/simulate-error",
                    json={"errorType": kind, "component": agent, "count": 10},
                ).raise_for_status()
                for n in range(2):
                    http.post("/chat", json={"message": message, "userId": f"u{n}"})
            # Incidents are made off the request path: poll, a bounded number of times.
            for _ in range(100):
                listed = http.get("/api/emergency/incidents").json()
                if listed["total"] >= 3:
                    break
                time.sleep(0.1)
            assert listed["total"] >= 3, listed
    finally:
        assert service.stop() == 0
    env = cli_env(tmp_path)
    replay = ers(env, "classify", "--against-stored", "-o", "json")
    assert replay.returncode == 0, replay.stderr
    summary = json.loads(replay.stdout)
    assert summary["total"] >= 2, summary
    assert (summary["changed"], summary["regrouped"], summary["changes"]) == (0, 0, {})
    assert summary["byRuleBefore"] == summary["byRuleAfter"], summary
    assert sum(summary["byRuleAfter"].values()) == summary["total"], summary
    assert summary["alertSpansLeftOut"] == 1, summary
    people = ers(env, "classify", "--against-stored")
    assert f"{summary['total']} stored error spans: 0 would be classified" in people.stdout
    assert "1 span of Alertmanager alerts left out" in people.stdout, people.stdout


def test_status_at_a_glance_and_ending_minimal_mode(env: dict[str, str]) -> None:
    shown = ers(env, "status")
    assert shown.returncode == 0, shown.stderr
    rows = {line[:18].strip(): line[18:].strip() for line in shown.stdout.splitlines()[1:]}
    assert rows["system state"].split()[0] in ("normal", "degraded", "emergency", "recovery")
    assert rows["minimal mode"] == "off"
    as_json = json.loads(ers(env, "status", "-o", "json").stdout)
    assert as_json["minimalMode"]["active"] is False
    assert rows["active incidents"] == str(as_json["activeIncidents"])
    ended = ers(env, "minimal-mode", "end")
    assert ended.returncode == 0, ended.stderr
    assert ended.stdout.strip() == "minimal response mode was not on; nothing to end"


def test_ers_trace_says_when_the_service_answered_from_memory_alone(
    tmp_path: Path, own_server: PostgresServer
) -> None:
    """With the fleet's archive down, the service answers a trace it holds from memory and
    says so in a header; `ers trace` prints the same tree and says, in one line on stderr,
    that spans kept elsewhere may be missing."""
    env = {"ERS_DATABASE_URL": own_server.create_database(), "ERS_INTAKE_TOKEN": INTAKE_TOKEN}
    server = start_ers(tmp_path / "ers", env=env)
    try:
        trace_id = send_failure(server.url)  # by the official OTLP exporter
        shell = cli_env(tmp_path, server.url)
        read = ers(shell, "trace", trace_id)
        assert (read.returncode, read.stderr) == (0, ""), read.stderr
        assert "charge card" in read.stdout

        own_server.halt()
        alone = ers(shell, "trace", trace_id)
        assert alone.returncode == 0, alone.stderr
        assert alone.stdout == read.stdout
        # Before: nothing said the archive's spans were not in it.
        (line,) = alone.stderr.splitlines()
        assert line.startswith("ers: only the spans in the service's memory (the archive "), line
        assert line.endswith("spans kept before a restart or by another replica may be missing")
    finally:
        assert server.stop() == 0
