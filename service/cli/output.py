"""How every ``ers`` command answers: a table for people, ``-o json`` / ``-o yaml`` for
scripts, one plain line on stderr and a documented exit code when something went wrong."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from service.errors import breaks_a_line, cut_short
from telemetry.redaction import redacted_url

# Exit codes, the same for every command (listed in `ers --help` and the README).
OK = 0
FAILED = 1  # the operation ran and failed (a backup, a rollback, a repository check)
USAGE = 2  # a bad argument, a missing token file, unusable settings
UNREACHABLE = 3  # no answer from the service at --url
REFUSED = 4  # the service answered 4xx: not found, not allowed, not valid
SERVER_ERROR = 5  # the service answered 5xx: it failed or is not ready

EXIT_CODES = f"""\
exit codes:
  {OK}  done
  {FAILED}  the operation failed (an offline backup or rollback, a failed repository check,
     a test rollback whose copy fails its check, an `ers serve` whose start-up failed)
  {USAGE}  bad usage: unknown option, rollback without --yes, missing token file, bad settings
  {UNREACHABLE}  cannot reach the service at --url / $ERS_URL
  {REFUSED}  the service refused the request (4xx: not found, unauthorized, invalid)
  {SERVER_ERROR}  the service failed (5xx: backup failed, repository unavailable)
  130  interrupted (Ctrl-C); a command waiting on the service stops only its wait: the
     service goes on with work it received (an --offline command stops its work)"""

FORMATS = ("table", "json", "yaml")
SHORT_ID = 8


class CliError(Exception):
    """One line for stderr and the exit code that goes with it."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


def not_ers(what_came: str) -> CliError:
    """A reply ERS never gives: something else answers at --url."""
    return CliError(f"{what_came}: is --url the ERS service?", SERVER_ERROR)


def add_output_option(parser: argparse.ArgumentParser, top: bool) -> None:
    """``-o`` is accepted before and after the subcommand; a subcommand's own ``-o`` wins
    only when given (SUPPRESS keeps it from overwriting the top-level value)."""
    default: Any = "table" if top else argparse.SUPPRESS
    parser.add_argument(
        "-o",
        "--output",
        choices=FORMATS,
        default=default,
        help="table (default), or json / yaml for scripts",
    )
    # Older spelling of `-o json`, kept for the scripts that use it.
    parser.add_argument(
        "--json",
        dest="output",
        action="store_const",
        const="json",
        default=default,
        help=argparse.SUPPRESS,
    )


# Piped into grep or less, a row stays on one line: rich's 80 columns are for terminals (at
# 250, a long footer or an audit entry's detail was folded onto a second line).
PIPE_WIDTH = 100_000


class _Stdout(Console):
    def on_broken_pipe(self) -> None:
        # rich exits 1 here; `ers ... | head -1` is no failure: main() ends quietly with 0.
        raise BrokenPipeError


class _NoTrailingSpaces:
    """stdout for a pipe: table cells are padded to their column, which only makes noise
    for grep, diff and cut at the end of a line."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(_TRAILING_SPACES.sub("\n", text))

    def flush(self) -> None:
        self._stream.flush()


_TRAILING_SPACES = re.compile(r"[ \t]+\n")


def stdout() -> Console:
    # markup=False: what is printed comes from the service (an agent's error, a reason, an
    # alert's words), where "[/var/log]" is text, not a closing tag of rich's markup.
    console = _Stdout(highlight=False, markup=False)
    if not console.is_terminal:
        console = _Stdout(
            highlight=False,
            markup=False,
            width=PIPE_WIDTH,
            file=_NoTrailingSpaces(sys.stdout),  # type: ignore[arg-type]
        )
    return console


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def note(message: str) -> None:
    """One line on stderr beside a command's output, which it leaves as it is (a pipe reads
    stdout): what the operator should know of what was shown."""
    print(f"ers: {printable(message)}", file=sys.stderr)


def emit(args: argparse.Namespace, data: Any, table: Callable[[Console, Any], None]) -> None:
    """Print ``data`` in the chosen format: ``table`` draws it for people."""
    fmt = getattr(args, "output", "table")
    if fmt == "json":
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    elif fmt == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=True, default_flow_style=False))
    elif getattr(args, "offline", False):
        table(stdout(), printable(data))
    else:
        try:
            table(stdout(), printable(data))
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            # Deeper than the keys `call` checks: a value of another shape than ERS's.
            what = f"{exc.__class__.__name__}: {exc}"
            at = redacted_url(args.url)
            raise not_ers(f"{at} answered with JSON ERS does not give ({what})") from None


def _escaped(char: str) -> str:
    # Shown raw, a control character (a line break, an escape sequence) breaks the row or
    # drives the terminal, and a directional formatting character reorders what is read.
    return char.encode("unicode_escape").decode("ascii") if breaks_a_line(char) else char


def printable(data: Any) -> Any:
    """``data`` with every text in it on one line for a table: each control or directional
    formatting character written as its escape (``\\n``, ``\\x1b``, ``\\u202e``). A
    message an agent, another service or a person wrote reaches the operator's terminal as
    what it says, not as what it does; ``-o json`` keeps the text as it is."""
    if isinstance(data, str):
        return "".join(map(_escaped, data))
    if isinstance(data, dict):
        return {key: printable(value) for key, value in data.items()}
    if isinstance(data, list):
        return [printable(item) for item in data]
    return data


def new_table(*columns: str, title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


# A free-text cell of a list (an error, a reason, a message): whole up to this many characters,
# else cut with "…"; the command's ``show`` prints it whole.
CELL_CHARS = 80


def cell(text: str | None) -> str:
    return cut_short(text, CELL_CHARS) if text else "-"


def short_id(snapshot_id: str | None) -> str:
    """Snapshot ids are shown as restic's short id; the full id is accepted everywhere."""
    return "-" if not snapshot_id else snapshot_id[:SHORT_ID]


def when(moment: str | None) -> str:
    """One timestamp style for people: UTC to the second."""
    if not moment:
        return "-"
    text = moment.replace("T", " ")
    for sep in (".", "+", "Z"):
        text = text.split(sep)[0]
    return f"{text}Z"


def size(value: int | None) -> str:
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"


def joined(items: Iterable[str] | None) -> str:
    values = list(items or [])
    return ", ".join(values) if values else "-"


class Activity:
    """Progress of long work on stderr: a spinner and the elapsed time from the start, and a
    bar with the percentage once restic reports how far it is (its ``--json`` status lines).
    Drawn only on a terminal; scripts get the result alone."""

    def __init__(self, progress: Progress, description: str) -> None:
        self._progress = progress
        self._task = progress.add_task(description, total=None)

    def stage(self, description: str) -> None:
        self._progress.update(self._task, description=description)

    def restic_status(self, status: Any) -> None:
        self._progress.update(self._task, total=1.0, completed=float(status.percent_done))


@contextmanager
def activity(description: str, with_bar: bool = True) -> Iterator[Activity]:
    console = stderr()
    columns: Sequence[Any] = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        *((BarColumn(), TaskProgressColumn()) if with_bar else ()),
        TimeElapsedColumn(),
    )
    progress = Progress(*columns, console=console, transient=True, disable=not console.is_terminal)
    with progress:
        yield Activity(progress, description)
