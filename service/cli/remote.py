"""Talking to a running ERS over HTTP: where it is (``--url`` / ``$ERS_URL``), the admin
token (``--token-file``, ``$ERS_ADMIN_TOKEN``, ``$ERS_ADMIN_TOKEN_FILE``), and what a failed
request becomes (one line and an exit code, see ``service.cli.output``)."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx

from service.cli.output import (
    REFUSED,
    SERVER_ERROR,
    UNREACHABLE,
    USAGE,
    CliError,
    activity,
    not_ers,
)
from service.config_checks import presentable_token
from service.errors import NO_ROUTE
from telemetry.redaction import redacted_url

DEFAULT_URL = "http://127.0.0.1:8000"
TOKEN_SOURCES = "--token-file, $ERS_ADMIN_TOKEN or $ERS_ADMIN_TOKEN_FILE"
# Reads answer at once; backups, rollbacks and checks run restic and take longer.
READ_TIMEOUT_S = 30.0
WORK_TIMEOUT_S = 900.0


def add_connection_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """Accepted before and after the subcommand (SUPPRESS: a subcommand's copy only counts
    when given, so `ers --url X backup list` and `ers backup list --url X` both work)."""
    parser.add_argument(
        "--url",
        default=os.environ.get("ERS_URL", DEFAULT_URL) if top else argparse.SUPPRESS,
        help=f"the service's base URL (default $ERS_URL, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=None if top else argparse.SUPPRESS,
        help="file holding the admin token (default $ERS_ADMIN_TOKEN, or the file named by "
        "$ERS_ADMIN_TOKEN_FILE; not both)",
    )


def admin_token(args: argparse.Namespace) -> str | None:
    """--token-file first, else $ERS_ADMIN_TOKEN or the file $ERS_ADMIN_TOKEN_FILE names (not
    both)."""
    token_file: Path | None = getattr(args, "token_file", None)
    origin = "--token-file"
    if token_file is None:
        # Blank counts as unset (an unset compose variable gives one): it hides nothing.
        token = os.environ.get("ERS_ADMIN_TOKEN", "").strip()
        named = os.environ.get("ERS_ADMIN_TOKEN_FILE", "").strip()
        if token and named:  # as `ers serve` refuses them: a token rotated in the file lost
            raise CliError(
                "$ERS_ADMIN_TOKEN and $ERS_ADMIN_TOKEN_FILE are both set, and which one is "
                "meant cannot be told; unset one of them, or give --token-file",
                USAGE,
            )
        if token:
            return _presentable(token, "$ERS_ADMIN_TOKEN")
        if not named:
            return None
        token_file, origin = Path(named), "$ERS_ADMIN_TOKEN_FILE"
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:  # not a text file: not the token either
        raise CliError(
            f"cannot read the admin token file {token_file} (from {origin}): "
            f"{getattr(exc, 'strerror', None) or exc}; give a readable file with --token-file or "
            "$ERS_ADMIN_TOKEN_FILE, or the token itself in $ERS_ADMIN_TOKEN",
            USAGE,
        ) from None
    if not token:
        raise CliError(f"the admin token file {token_file} (from {origin}) is empty", USAGE)
    return _presentable(token, f"the admin token file {token_file} (from {origin})")


def _presentable(token: str, origin: str) -> str:
    """A token a request can carry, as ``ers serve`` accepts one: the request was never sent
    (a traceback from the HTTP client) or refused with a 401."""
    try:
        presentable_token(token)
    except ValueError as exc:
        raise CliError(f"{origin}: {exc}", USAGE) from None
    return token


def _token_origin(args: argparse.Namespace) -> str:
    """Where ``admin_token`` took the token from, in the words of its option or variable."""
    if getattr(args, "token_file", None) is not None:
        return "--token-file"
    if os.environ.get("ERS_ADMIN_TOKEN", "").strip():
        return "$ERS_ADMIN_TOKEN"
    return "the file $ERS_ADMIN_TOKEN_FILE names"


def segment(value: str) -> str:
    """An argument as one segment of a path: a '/', '?' or '..' in it would otherwise make
    the request go to another route (`ers incidents show ../backups` read the backups), and
    an empty one to the list's route, whose redirect read as a service that is not ERS."""
    if not value.strip():
        raise CliError("the name or id given is empty; the list commands show them", USAGE)
    if value in (".", ".."):
        return value.replace(".", "%2E")  # quote() keeps dots, and a client drops these
    return quote(value, safe="")


def _detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        # ERS answers every error in JSON: a page in HTML or text comes from something else
        # at --url (another server, a proxy), and its markup is no message for a terminal.
        kind = response.headers.get("content-type", "").partition(";")[0] or "a body"
        return (
            f"{response.reason_phrase or 'no reason given'}, in {kind} rather than ERS's JSON: "
            "is --url the ERS service, or a proxy in front of it failing?"
        )
    detail = data.get("detail", data) if isinstance(data, dict) else data
    if isinstance(detail, list):  # FastAPI's validation errors
        detail = "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}"
            if isinstance(d, dict)
            else str(d)
            for d in detail
        )
    return str(detail)


def call(
    args: argparse.Namespace,
    method: str,
    path: str,
    body: Any = None,
    *,
    params: dict[str, Any] | None = None,
    waiting: str | None = None,
    expect: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One request; ``waiting`` names long work, shown with a spinner and the elapsed time
    while the service does it (its routes answer once, when the work is done). ERS answers
    each of these routes with a JSON object holding ``expect`` (the keys the caller reads)."""
    return exchange(args, method, path, body, params=params, waiting=waiting, expect=expect)[0]


def exchange(
    args: argparse.Namespace,
    method: str,
    path: str,
    body: Any = None,
    *,
    params: dict[str, Any] | None = None,
    waiting: str | None = None,
    expect: tuple[str, ...] = (),
) -> tuple[dict[str, Any], httpx.Headers]:
    """``call``, and the reply's headers, for a command that says what one of them says."""
    url: str = args.url
    # What the messages show of it: a password or a query value typed into --url stays on
    # the command line, not in the output (a terminal's scrollback, a CI log).
    shown = redacted_url(url)
    headers = {}
    token = admin_token(args)
    if token:
        headers["Authorization"] = f"Bearer {token}"
        if "@" in urlsplit(url).netloc:  # httpx would send them instead of the token
            raise CliError(
                f"--url {shown!r} holds a user name and password, which would be sent instead "
                "of the admin token (a request has one Authorization header); take them out "
                "of --url / $ERS_URL",
                USAGE,
            )
    timeout = WORK_TIMEOUT_S if waiting else READ_TIMEOUT_S
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=timeout) as http:
            if waiting:
                with activity(waiting, with_bar=False), _told_when_interrupted(waiting):
                    response = http.request(method, path, json=body, params=params)
            else:
                response = http.request(method, path, json=body, params=params)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        # Named by where it came from: ERS_URL=127.0.0.1:8100 was blamed on a --url not given.
        given = "$ERS_URL" if url == os.environ.get("ERS_URL") else "--url"
        raise CliError(
            f"{given} {shown!r} is not a URL: {str(exc).rstrip('.')}; give the service's "
            f"base URL, e.g. {DEFAULT_URL}",
            USAGE,
        ) from None
    except httpx.TimeoutException as exc:
        going_on = f"; {FINISHES}{_see(waiting)}" if waiting else ""
        going_on = "" if isinstance(exc, httpx.ConnectTimeout) else going_on
        raise CliError(
            f"ERS at {shown} did not answer {method} {path} within {timeout:.0f} s{going_on}",
            UNREACHABLE,
        ) from None
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:  # the request was sent
        raise CliError(
            f"ERS at {shown} closed the connection before it answered {method} {path} "
            f"({exc}): it may have stopped (a crash, a kill) in the middle of the request"
            f"{_see(waiting, 'ended') if waiting else ''}",
            UNREACHABLE,
        ) from None
    except httpx.HTTPError as exc:
        raise CliError(
            f"cannot reach ERS at {shown} ({exc.__class__.__name__}: {exc}); is it running? "
            "Point --url or $ERS_URL at it",
            UNREACHABLE,
        ) from None
    if response.status_code == 401:
        hint = (
            f"; the admin token from {_token_origin(args)} is not the one ERS was given"
            if token
            else f"; give the admin token with {TOKEN_SOURCES}"
        )
        raise CliError(f"refused (401): {_detail(response)}{hint}", REFUSED)
    if response.status_code >= 500:
        raise CliError(f"ERS failed ({response.status_code}): {_detail(response)}", SERVER_ERROR)
    if response.status_code == 404 and _detail(response).startswith(NO_ROUTE):
        # The router's answer for a path it has no route for: ERS's own 404s say what is
        # missing (an incident, a snapshot). The server decodes a quoted '/', so an argument
        # holding one matches no route: that is no fault of --url.
        slashed = [unquote(part) for part in path.split("/") if "%2F" in part]
        if slashed:
            raise CliError(
                f"refused (404): ERS knows no {slashed[0]!r}: no id or name holds a '/'", REFUSED
            )
        sent = response.request.url  # without the command's own query: no route had them
        for name in params or ():
            sent = sent.copy_remove_param(name)
        raise CliError(
            f"{redacted_url(str(sent))} is no route of ERS: is --url the "
            "service's base URL, "
            f"without a path (e.g. {DEFAULT_URL})?",
            USAGE,
        )
    if response.status_code >= 400:
        raise CliError(f"refused ({response.status_code}): {_detail(response)}", REFUSED)
    try:
        data = response.json()
    except ValueError:
        status = response.status_code
        raise not_ers(f"{method} {path} at {shown} answered {status} with no JSON") from None
    missing = [key for key in expect if key not in data] if isinstance(data, dict) else None
    if missing is None or missing:
        what = "no JSON object" if missing is None else f"JSON without {missing[0]!r}"
        raise not_ers(f"{method} {path} at {shown} answered {response.status_code} with {what}")
    return data, response.headers


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse type for a count the service bounds: out of them is a usage mistake
    (exit 2) said by the CLI, the same for every command, not the service's 422."""

    def parse(text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(
                f"must be a whole number from {low} to {high}, not {text}"
            )
        return int(text)

    return parse


def command(
    commands: argparse._SubParsersAction, name: str, help: str, **kwargs: Any
) -> argparse.ArgumentParser:
    """A subcommand that takes the connection and output options like the top level."""
    from service.cli.output import add_output_option

    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=help, description=kwargs.pop("description", help), **kwargs
    )
    add_connection_options(parser, top=False)
    add_output_option(parser, top=False)
    return parser


def command_group(
    commands: argparse._SubParsersAction, name: str, help: str, description: str | None = None
) -> argparse._SubParsersAction:
    """A command whose subcommands (its ACTION) are added to what this returns. The
    connection and output options are taken between the two as well (`ers breakers --url
    URL list`): an operator cannot be expected to know where a command ends."""
    return actions_of(commands.add_parser(name, help=help, description=description or help))


def actions_of(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    from service.cli.output import add_output_option

    add_connection_options(parser, top=False)
    add_output_option(parser, top=False)
    return parser.add_subparsers(dest="action", required=True, metavar="ACTION")


@contextlib.contextmanager
def _told_when_interrupted(waiting: str) -> Iterator[None]:
    """A Ctrl-C while long work runs stops this command's wait, not the work: exit 130
    saying so (before: nothing, and a rollback that went on looked cancelled)."""
    try:
        yield
    except KeyboardInterrupt:
        raise CliError(
            f"interrupted: only this command stopped waiting ({waiting}); {FINISHES}"
            f"{_see(waiting)}",
            130,
        ) from None


FINISHES = "the service finishes the work if it received the request"


def _see(waiting: str, tense: str = "ends") -> str:
    """Where to see how long work whose answer did not come went."""
    # Rollbacks are in the audit trail; backups, prunes and an init only in the list.
    audit = "`ers audit` and " if waiting == "rolling back" else ""
    changes = waiting in ("rolling back", "backing up", "restic prune", "initialising")
    return f"; see how it {tense} with {audit}`ers backup list`" if changes else ""
