"""The ``ers`` command against what is not ERS, or asked what ERS does not know: a reply of
another shape, arguments that are no path segment, bounds the service would refuse. Each is
one line on stderr and the documented exit code, never a traceback."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ErsProcess
from tests.integration.test_cli import cli_env, ers, one_plain_line


class _Answers(http.server.BaseHTTPRequestHandler):
    """200 with a JSON object ERS never sends, to every request; keeps the paths asked."""

    asked: list[str] = []

    def _answer(self) -> None:
        self.asked.append(f"{self.command} {self.path}")
        body = json.dumps({"hello": "world"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_ers() -> Iterator[tuple[str, list[str]]]:
    """The URL of a server answering JSON of another shape, and the requests it got."""
    asked: list[str] = []
    handler = type("Handler", (_Answers,), {"asked": asked})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def test_a_json_reply_of_another_shape_is_one_line_asking_about_the_url(
    tmp_path: Path, not_ers: tuple[str, list[str]]
) -> None:
    url, _ = not_ers
    env = cli_env(tmp_path, url)
    for args in (
        ("status",),
        ("status", "-o", "json"),
        ("breakers", "list"),
        ("breakers", "reset", "budget"),
        ("incidents", "list"),
        ("incidents", "show", "INC_20260101_000000_abcdef"),
        ("incidents", "resolve", "INC_20260101_000000_abcdef", "--resolution", "fixed"),
        ("trace", "0" * 32),
        ("backup", "list"),
        ("backup", "show", "deadbeef"),
        ("backup", "create"),
        ("minimal-mode", "end"),
        ("audit",),
    ):
        result = ers(env, *args)
        assert result.returncode == 5, (args, result)
        line = one_plain_line(result)
        assert url in line and "is --url the ERS service?" in line, (args, line)


def test_an_argument_reaches_the_service_as_one_path_segment(
    tmp_path: Path, not_ers: tuple[str, list[str]]
) -> None:
    url, asked = not_ers
    env = cli_env(tmp_path, url)
    for args in (
        ("incidents", "show", "../backups"),
        ("incidents", "acknowledge", ".."),
        ("breakers", "reset", "x/../../incidents?"),
        ("backup", "show", "a?b#c"),
        ("trace", "."),
    ):
        ers(env, *args)
    assert asked == [
        "GET /api/emergency/incidents/..%2Fbackups",
        "POST /api/emergency/incidents/%2E%2E/acknowledge",
        "POST /api/emergency/circuit-breaker/x%2F..%2F..%2Fincidents%3F/reset",
        "GET /api/emergency/backups/a%3Fb%23c",
        "GET /api/emergency/traces/%2E",
    ]


def test_an_argument_that_is_no_id_is_refused_by_the_service_not_sent_elsewhere(
    tmp_path: Path, ers_process: ErsProcess
) -> None:
    env = cli_env(tmp_path, ers_process.url)
    for args, words in (
        (("incidents", "show", "../backups"), "'../backups'"),
        (("incidents", "show", ".."), "422"),
        (("breakers", "reset", "x/../../incidents?"), "'x/../../incidents?'"),
        (("breakers", "reset", "budget/reset?"), "'budget/reset?'"),
        (("breakers", "reset", "budget?"), "no agent named 'budget?'"),
        (("backup", "show", "../status"), "'../status'"),
    ):
        result = ers(env, *args)
        assert result.returncode == 4, (args, result)
        assert words in one_plain_line(result), (args, result.stderr)


def test_connection_and_output_options_go_between_a_command_and_its_action(
    tmp_path: Path, ers_process: ErsProcess
) -> None:
    env = cli_env(tmp_path)  # no ERS_URL: only the option says where the service is
    url = ers_process.url
    for args in (
        ("breakers", "--url", url, "-o", "json", "list"),
        ("incidents", "--url", url, "--output", "json", "list"),
        ("minimal-mode", "--url", url, "-o", "json", "end"),
    ):
        result = ers(env, *args)
        assert result.returncode == 0, (args, result)
        assert isinstance(json.loads(result.stdout), dict), args
    backups_off = ers(env, "backup", "-o", "json", "--url", url, "list")
    assert backups_off.returncode == 5 and "503" in one_plain_line(backups_off), backups_off
    # The action's own copy wins, as the subcommand's does over the top level's.
    nobody = "http://127.0.0.1:9"
    last = ers(env, "breakers", "--url", nobody, "list", "--url", url, "-o", "json")
    assert last.returncode == 0 and "breakers" in json.loads(last.stdout), last


def test_a_limit_or_offset_out_of_the_services_bounds_is_a_usage_mistake(
    tmp_path: Path,
) -> None:
    env = cli_env(tmp_path, "http://127.0.0.1:9")  # never asked: the CLI refuses first
    for args, words in (
        (("incidents", "list", "--limit", "0"), "--limit: must be a whole number from 1 to 500"),
        (("incidents", "list", "--limit", "501"), "from 1 to 500, not 501"),
        (("incidents", "list", "--offset", "-1"), "--offset: must be a whole number from 0"),
        (("audit", "--limit", "0"), "--limit: must be a whole number from 1 to 1000, not 0"),
        (("audit", "--limit", "1001"), "from 1 to 1000, not 1001"),
    ):
        result = ers(env, *args)
        assert result.returncode == 2, (args, result)
        assert words in one_plain_line(result), (args, result.stderr)
