"""Arguments the ``ers`` command sends to the service must be text a request can carry.

Python reads a command line's bytes that are not UTF-8 (a terminal in Latin-1) as lone
surrogates; sent on in a path, a query or a JSON body, they stopped the HTTP client with a
traceback. They are refused first, naming the argument. Files named on the command line are
opened as the bytes given, and are left alone."""

from __future__ import annotations

import argparse
import os

from service.cli.output import USAGE, CliError

# Arguments naming files: opened as given, never sent.
PATHS = frozenset({"token_file", "explain", "rules"})


def _spellings(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each argument's destination, and how the command line spells it."""
    names: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                for dest, name in _spellings(sub).items():
                    names.setdefault(dest, name)
        elif action.option_strings:
            names.setdefault(action.dest, max(action.option_strings, key=len))
        else:
            names.setdefault(action.dest, str(action.metavar or action.dest))
    return names


def refuse_undecodable(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Raise a usage error naming the first argument that is not UTF-8 text."""
    for dest, value in vars(args).items():
        if dest in PATHS:
            continue
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str):
                continue
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                name = _spellings(parser).get(dest, dest)
                if dest == "url" and item == os.environ.get("ERS_URL"):
                    name = "$ERS_URL"
                byte = ord(item[exc.start]) - 0xDC00
                raise CliError(
                    f"{name} is not UTF-8 text (byte 0x{byte:02x} at character "
                    f"{exc.start + 1}); give it in UTF-8 (is the terminal's encoding UTF-8?)",
                    USAGE,
                ) from None
