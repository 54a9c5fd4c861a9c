"""``ers breakers``: list and show the breakers of a running service; reset, force open,
release, disable and enable one."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from service.cli.output import cell, emit, new_table, when
from service.cli.remote import call, command, command_group, segment
from service.resilience.breaker_config import in_words
from service.resilience.breaker_open import MAX_FORCE_OPEN_S


def ttl_seconds(text: str) -> float:
    """--ttl: seconds, more than 0 and at most a week, said in the flag's own terms."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not 0 < value <= MAX_FORCE_OPEN_S:
        raise argparse.ArgumentTypeError(
            f"must be more than 0 and at most {MAX_FORCE_OPEN_S} seconds (a week), not {text}"
        )
    return value


def _until(b: dict[str, Any]) -> str:
    """When the state ends by itself: an open breaker's half-open, a forced open's expiry."""
    forced = b.get("forced")
    if forced:
        return when(forced.get("expiresAt")) if forced.get("expiresAt") else "released"
    return when(b.get("nextAttemptAt")) if b["state"] == "open" else "-"


def _table(out: Console, report: dict[str, Any]) -> None:
    table = new_table(
        "AGENT", "STATE", "UNTIL", "FAILURES", "RATE", "REJECTED", "LAST ERROR / FORCED BY"
    )
    for name, b in sorted(report["breakers"].items()):
        rate = "-" if b.get("failureRate") is None else f"{b['failureRate']:.0%}"
        forced = b.get("forced")
        note = f"{forced['source']}: {forced['reason']}" if forced else (b.get("lastError") or "")
        state = in_words(b["state"])
        if b.get("cooldownRemainingS"):
            # Closed, yet no call reaches the agent: it asked to be left alone.
            state += ", cooling down"
            note = f"rate limited: called again in {b['cooldownRemainingS']:.0f} s"
        table.add_row(
            name,
            state,
            _until(b),
            str(b["failureCount"]),
            rate,
            str(b.get("rejectedCalls", 0)),
            cell(note),
        )
    out.print(table)
    totals = report["totals"]
    forced = f" ({totals['forced_open']} forced)" if totals.get("forced_open") else ""
    cooling = f", {totals['cooling_down']} cooling down" if totals.get("cooling_down") else ""
    out.print(
        f"total {totals['total']}: {totals['closed']} closed, {totals['open']} open{forced}, "
        f"{totals['half_open']} half-open, {totals.get('disabled', 0)} disabled{cooling}"
    )


def list_breakers(args: argparse.Namespace) -> int:
    emit(
        args,
        call(args, "GET", "/api/emergency/circuit-breakers", expect=("breakers", "totals")),
        _table,
    )
    return 0


def _details(out: Console, b: dict[str, Any]) -> None:
    rate = "-" if b.get("failureRate") is None else f"{b['failureRate']:.0%}"
    slow = "-" if b.get("slowCallRate") is None else f"{b['slowCallRate']:.0%}"
    forced = b.get("forced")
    lines = [
        ("state", in_words(b["state"])),
        ("until", _until(b)),
        ("forced by", f"{forced['source']}: {forced['reason']}" if forced else "-"),
        ("failures in a row", str(b["failureCount"])),
        ("failure rate", f"{rate} of {b.get('bufferedCalls', 0)} calls (slow {slow})"),
        ("last failure", f"{when(b.get('lastFailureAt'))} {b.get('lastError') or ''}".strip()),
        ("opened", when(b.get("openedAt"))),
        ("rejected calls", str(b.get("rejectedCalls", 0))),
    ]
    if b.get("cooldownRemainingS"):
        lines.append(("cooling down", f"called again in {b['cooldownRemainingS']:.0f} s"))
    width = max(len(key) for key, _ in lines)
    out.print(f"breaker {b['name']}")
    for key, value in lines:
        out.print(f"  {key:<{width}}  {value}")
    history = new_table("AT", "FROM", "TO", "BY", "WHY", title="history, oldest first")
    for event in b.get("history") or []:
        moved = event["from"] != event["to"]
        history.add_row(
            when(event["at"]),
            in_words(event["from"]) if moved else "-",
            in_words(event["to"] if moved else event["kind"]),
            event.get("source") or "-",
            cell(event.get("reason")),
        )
    out.print()
    out.print(history if b.get("history") else "no changes of state since the service started")


def show_breaker(args: argparse.Namespace) -> int:
    path = f"/api/emergency/circuit-breakers/{segment(args.name)}"
    emit(args, call(args, "GET", path, expect=("state", "history")), _details)
    return 0


def _body(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.action == "reset":
        return {"force": args.force}
    if args.action == "force-open":
        return {"reason": args.reason, "ttlSeconds": args.ttl}
    return None


def _message(out: Console, reply: dict[str, Any]) -> None:
    out.print(reply["message"])


def change_breaker(args: argparse.Namespace) -> int:
    """reset, force-open, release, disable, enable: each subcommand is its route's name."""
    path = f"/api/emergency/circuit-breaker/{segment(args.name)}/{args.action}"
    emit(args, call(args, "POST", path, _body(args), expect=("message", "breaker")), _message)
    return 0


NAME_HELP = "agent name or seed alias (NPA, WPA, BMA, MCA)"


def register(commands: argparse._SubParsersAction) -> None:
    actions = command_group(commands, "breakers", "circuit breakers of a running service")
    listing = command(actions, "list", "every breaker with its state")
    listing.set_defaults(handler=list_breakers)
    showing = command(actions, "show", "one breaker: its state, why, until when, its history")
    showing.add_argument("name", help=NAME_HELP)
    showing.set_defaults(handler=show_breaker)
    reset = command(actions, "reset", "close a breaker (refused while still failing)")
    reset.add_argument("--force", action="store_true", help="reset even if still failing")
    forcing = command(actions, "force-open", "isolate an agent")
    forcing.add_argument("--reason", required=True, help="why, kept with the breaker")
    forcing.add_argument("--ttl", type=ttl_seconds, default=None, help="seconds until half-open")
    releasing = command(actions, "release", "lift a forced open (goes half-open)")
    disabling = command(actions, "disable", "let every call through, unguarded")
    enabling = command(actions, "enable", "guard a disabled breaker's calls again")
    for sub in (reset, forcing, releasing, disabling, enabling):
        sub.add_argument("name", help=NAME_HELP)
        sub.set_defaults(handler=change_breaker)
