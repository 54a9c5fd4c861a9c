"""The ``ers`` command: serve, and talk to a running service."""

from __future__ import annotations

import argparse
import errno
import faulthandler
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from service.cli.argument_text import refuse_undecodable
from service.cli.output import (
    EXIT_CODES,
    FAILED,
    OK,
    USAGE,
    CliError,
    add_output_option,
    printable,
)
from service.cli.remote import DEFAULT_URL, add_connection_options
from service.settings import Environment, SettingsError, load_settings
from service.settings_errors import where_set
from telemetry.redaction import redacted_query

Handler = Callable[[argparse.Namespace], int]

# How long a shutdown waits for requests in flight before cutting them off; the final
# backup (shutdown_backup_timeout_s) comes after.
REQUEST_GRACE_S = 10


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.cli.server import GracefulServer
    from service.fleet.datadir_lock import (
        DataDirInUse,
        DataDirUnusable,
        HideRefusalTraceback,
        lock_for_service,
    )
    from service.web.app import create_app  # noqa: I001

    overrides = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    settings = load_settings(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # The pool warns, in several lines, at every failed reconnect: a 20 s outage of the
    # database wrote some 70 of them, burying ERS's own line that says it (and its end).
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    logging.getLogger("uvicorn.error").addFilter(HideRefusalTraceback())
    logging.getLogger("uvicorn.access").addFilter(AccessLogWithoutQueryValues())
    refused = SettingsRefusal()
    logging.getLogger("uvicorn.error").addFilter(refused)
    app = create_app(settings)
    if settings.env is Environment.PRODUCTION:
        keep_state_private(settings.data_dir)
    if settings.database_url is None:
        # Taken before the server says anything: a refusal is then one line and exit 2. The
        # lifespan holds it from there and releases it after its teardown.
        try:
            app.state.data_dir_lock = lock_for_service(settings.data_dir)
        except (DataDirInUse, DataDirUnusable) as exc:
            raise SettingsError(str(exc)) from None
    listener = listening_socket(settings.host, settings.port)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=args.access_log,
        timeout_graceful_shutdown=REQUEST_GRACE_S,
    )
    server = GracefulServer(config)
    tune_garbage_collector()
    # `kill -USR1 <pid>` writes every thread's stack to stderr: what a stuck worker waits on.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        server.run(listener)
    except SystemExit as exc:
        # uvicorn exits when the start-up fails, with 3: the failed operation's 1 here (3 is
        # the ers command's "the service cannot be reached").
        if refused.message is not None:
            raise SettingsError(refused.message) from None
        raise SystemExit(1 if exc.code == 3 else exc.code) from None
    return 0 if server.started else 1


def keep_state_private(data_dir: Path) -> None:
    """Production: profiles and conversations are personal data. What the service writes is
    its user's alone (umask 077), and so is the data directory (its files made before too:
    no other user can reach them through it)."""
    os.umask(0o077)
    log = logging.getLogger("ers")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        mode = stat.S_IMODE(data_dir.stat().st_mode)
    except OSError:
        return  # said by the data directory's own checks, in one line
    if not mode & 0o077:
        return
    try:
        data_dir.chmod(0o700)
    except OSError as exc:  # not its owner (a volume mounted for a group): files are 600
        log.warning(
            "the data directory %s has mode %o, which lets other users reach personal data,"
            " and cannot be made 700 (%s); the files ERS writes there are its user's alone",
            data_dir,
            mode,
            exc.strerror,
        )
        return
    log.warning(
        "the data directory %s had mode %o, which lets other users read personal data;"
        " it is 700 now",
        data_dir,
        mode,
    )


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything starts. uvicorn binds only after the
    start-up: a port in use then stopped a service that had already made its data directory
    (so the next start was no first start, and created no backup repository), with exit 3
    and a line naming neither the setting nor what to do."""
    sock: socket.socket | None = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        if sock is not None:
            sock.close()
        fix = (
            "use an address of this machine with --host / ERS_HOST"
            if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL
            else "stop what listens there, or choose another port with --port / ERS_PORT"
        )
        reason = exc.strerror or exc
        raise SettingsError(f"cannot listen on {host}:{port} ({reason}): {fix}") from None
    # Left non-inheritable, as Python makes it: uvloop's subprocesses keep every inheritable
    # descriptor, so each restic or pg_restore would hold the port, and one still running
    # after a kill -9 would make the next start fail with "Address already in use".
    return sock


class SettingsRefusal(logging.Filter):
    """A setting only the start-up can check (an agent whose factory fails) stops it with a
    SettingsError: uvicorn logs it as a traceback; it is kept here instead, to be said in
    one line like every other setting. Made once the app is imported: its subclasses
    (FactoryFailed), at any depth, are known by then."""

    def __init__(self) -> None:
        super().__init__()
        self.message: str | None = None
        kinds = [SettingsError]
        for kind in kinds:
            kinds.extend(kind.__subclasses__())
        self._names = {f"{kind.__module__}.{kind.__qualname__}" for kind in kinds}

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        for line in text.splitlines():
            raised, colon, message = line.partition(": ")
            if colon and raised in self._names:
                self.message = message
                return False
        return not (self.message is not None and "Application startup failed" in text)


class AccessLogWithoutQueryValues(logging.Filter):
    """uvicorn's access log line with the values of its query redacted, names kept: a query
    can carry a credential (a client's `?token=...`, which ERS never takes), as ERS's own
    telemetry leaves the query string out for."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            path, question, query = args[2].partition("?")
            if question:
                record.args = (*args[:2], f"{path}?{redacted_query(query)}", *args[3:])
        return True


def tune_garbage_collector() -> None:
    """Move start-up objects out of the collector's sight and collect young objects less
    often: every request allocates spans, attributes and replies that die young, and the
    default threshold makes the collector run every few requests."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


DESCRIPTION = """\
ERS: emergency response for agents. `ers serve` runs the service; every other command talks
to a running one over HTTP (backup also works straight on the repository with --offline)."""

EPILOG = f"""\
connection (accepted anywhere after `ers`, e.g. `ers breakers --url URL list`):
  --url / $ERS_URL            where the service listens (default {DEFAULT_URL});
                              after `make run PORT=8100`: export ERS_URL=http://127.0.0.1:8100
  --token-file / $ERS_ADMIN_TOKEN / $ERS_ADMIN_TOKEN_FILE
                              the admin token, needed for changes (and for reads in production)
output:
  -o table (default) | json | yaml, the same on every command

{EXIT_CODES}
"""


class Parser(argparse.ArgumentParser):
    """A usage mistake is one line, as every other failure is, naming the help that shows
    the usage; argparse prints the whole usage block first, several lines for a subcommand
    with choices. Subcommands' parsers are of this class too (argparse makes them so)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("ers").strip()
        where = f"{command}: " if command else ""
        self.exit(USAGE, f"ers: {where}{message}; `{self.prog} --help` shows the usage\n")


def host_name(text: str) -> str:
    # An empty host would listen on every interface, not on the configured one.
    if not text.strip():
        raise argparse.ArgumentTypeError("give an address or host name, not an empty one")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ers",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_connection_options(parser, top=True)
    add_output_option(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd = commands.add_parser("serve", help="run the service")
    serve_cmd.add_argument(
        "--host", type=host_name, help="address to listen on (default from settings)"
    )
    serve_cmd.add_argument("--port", type=int, help="port to listen on (default from settings)")
    serve_cmd.add_argument(
        "--access-log", action="store_true", help="log every request (its query values redacted)"
    )
    serve_cmd.set_defaults(handler=serve)
    for register in _extra_commands():
        register(commands)
    return parser


def _extra_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    from service.cli import backup, breakers, incidents, status

    return [status.register, breakers.register, backup.register, incidents.register]


def _quiet_broken_pipe() -> int:
    """The reader went away (`ers ... | head -1`): stop writing, say nothing. Python would
    otherwise report the failed flush of stdout at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # named by the command they were given to, whose help lists what it takes
        command = " ".join(filter(None, ("ers", args.command, getattr(args, "action", None))))
        parser.exit(
            USAGE,
            f"ers: unrecognized arguments: {' '.join(extras)}; `{command} --help` shows the"
            " usage\n",
        )
    handler: Handler = args.handler
    try:
        refuse_undecodable(parser, args)
        code = handler(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except CliError as exc:  # one line, though the service quotes an agent's error of two
        print(f"ers: {printable(str(exc))}", file=sys.stderr)
        return exc.code
    except SettingsError as exc:
        options = [name for name in ("host", "port") if getattr(args, name, None) is not None]
        print(f"ers: {where_set(str(exc), options)}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # e.g. stdout cannot be written (a full disk): one line, no trace
        where = f": {exc.filename}" if exc.filename else ""
        print(f"ers: {exc.strerror or exc}{where}", file=sys.stderr)
        # What is left in stdout's buffer would fail again, with a trace, at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
