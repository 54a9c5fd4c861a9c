"""``ers breakers``: list, reset and force open breakers of a running service."""

from __future__ import annotations

import argparse
from typing import Any

from service.cli.remote import add_connection_options, call, print_json, run_remote


def _table(report: dict[str, Any]) -> None:
    print(f"{'agent':<11}{'state':<13}{'failures':>9}{'rate':>7}  last error / forced by")
    for name, b in sorted(report["breakers"].items()):
        rate = "-" if b["failureRate"] is None else f"{b['failureRate']:.0%}"
        forced = b.get("forced")
        note = f"{forced['source']}: {forced['reason']}" if forced else (b["lastError"] or "")
        print(f"{name:<11}{b['state']:<13}{b['failureCount']:>9}{rate:>7}  {note[:60]}")
    totals = report["totals"]
    print(
        f"total {totals['total']}: {totals['closed']} closed, {totals['open']} open, "
        f"{totals['half_open']} half-open"
    )


@run_remote
def list_breakers(args: argparse.Namespace) -> int:
    report = call(args, "GET", "/api/emergency/circuit-breakers")
    print_json(report) if args.json else _table(report)
    return 0


def _body(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.action == "reset":
        return {"force": args.force}
    if args.action == "force-open":
        return {"reason": args.reason, "ttlSeconds": args.ttl}
    return None


@run_remote
def change_breaker(args: argparse.Namespace) -> int:
    """reset, force-open, release, disable, enable: each subcommand is its route's name."""
    path = f"/api/emergency/circuit-breaker/{args.name}/{args.action}"
    reply = call(args, "POST", path, _body(args))
    print_json(reply) if args.json else print(reply["message"])
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("breakers", help="circuit breakers of a running service")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every breaker with its state")
    listing.set_defaults(handler=list_breakers)
    reset = actions.add_parser("reset", help="close a breaker (refused while still failing)")
    reset.add_argument("name", help="agent name or seed alias (NPA, WPA, BMA, MCA)")
    reset.add_argument("--force", action="store_true", help="reset even if still failing")
    reset.set_defaults(handler=change_breaker)
    forcing = actions.add_parser("force-open", help="isolate an agent")
    forcing.add_argument("name")
    forcing.add_argument("--reason", required=True)
    forcing.add_argument("--ttl", type=float, default=None, help="seconds until half-open")
    forcing.set_defaults(handler=change_breaker)
    releasing = actions.add_parser("release", help="lift a forced open (goes half-open)")
    releasing.add_argument("name")
    releasing.set_defaults(handler=change_breaker)
    disabling = actions.add_parser("disable", help="let every call through, unguarded")
    disabling.add_argument("name")
    disabling.set_defaults(handler=change_breaker)
    enabling = actions.add_parser("enable", help="guard a disabled breaker's calls again")
    enabling.add_argument("name")
    enabling.set_defaults(handler=change_breaker)
    for sub in (listing, reset, forcing, releasing, disabling, enabling):
        add_connection_options(sub)
