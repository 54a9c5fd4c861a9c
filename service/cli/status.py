"""``ers status``: the service at a glance; ``ers minimal-mode end``: chat calls agents again;
``ers audit``: what was done to the state, and by whom."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from service.cli.output import emit, new_table, short_id, when
from service.cli.remote import call, command, command_group, whole_number

STATUS_KEYS = ("systemState", "activeIncidents", "circuitBreakers", "backups", "health")


def _status_table(out: Console, status: dict[str, Any]) -> None:
    table = new_table("WHAT", "NOW")
    reason = status.get("stateReason")
    table.add_row("system state", status["systemState"] + (f" ({reason})" if reason else ""))
    table.add_row("active incidents", str(status["activeIncidents"]))
    breakers = status["circuitBreakers"]
    cooling, disabled = breakers.get("coolingDown"), breakers.get("disabled")
    table.add_row(
        "circuit breakers",
        f"{breakers['total']}: {breakers['closed']} closed, {breakers['open']} open, "
        f"{breakers['halfOpen']} half-open"
        + (f", {disabled} disabled" if disabled else "")
        + (f", {cooling} cooling down" if cooling else ""),
    )
    minimal = status.get("minimalMode") or {}
    table.add_row(
        "minimal mode",
        f"on for {minimal['remainingSeconds']:g} s more: {minimal['reason']}"
        if minimal.get("active")
        else "off",
    )
    table.add_row("backups", _backups_row(status["backups"]))
    health = status["health"]
    table.add_row("health", _health_row(health))
    table.add_row("memory", health.get("memoryUsage") or "-")
    table.add_row("uptime", health["uptime"])
    out.print(table)


def _health_row(health: dict[str, Any]) -> str:
    # The stores, disk and backups as of the last round of every check: GET
    # /api/emergency/health runs them now (a store paused by another replica's rollback
    # since shows there first).
    ago = health.get("fullCheckSecondsAgo")
    return health["overall"] if ago is None else f"{health['overall']} (full check {ago:.0f} s ago)"


def _backups_row(backups: dict[str, Any]) -> str:
    # Until the repository answers the count is not known: "0, last never" would say no
    # backup was ever made.
    if backups.get("error"):
        return f"unavailable: {backups['error']}"
    last = when(backups["lastBackup"]) if backups.get("lastBackup") else "never"
    return f"{backups['available']}, last {last}"


def show_status(args: argparse.Namespace) -> int:
    emit(args, call(args, "GET", "/api/emergency/status", expect=STATUS_KEYS), _status_table)
    return 0


def end_minimal_mode(args: argparse.Namespace) -> int:
    reply = call(args, "DELETE", "/api/emergency/minimal-mode", expect=("message",))
    emit(args, reply, lambda out, r: out.print(r["message"]))
    return 0


def _audit_table(out: Console, reply: dict[str, Any]) -> None:
    table = new_table("AT", "ACTOR", "ACTION", "DETAIL")
    for entry in reply["entries"]:
        detail = entry["detail"] if isinstance(entry["detail"], dict) else {}
        shown = ", ".join(f"{k} {_short(v)}" for k, v in detail.items() if v not in (None, []))
        table.add_row(when(entry["at"]), entry["actor"], entry["action"], shown)
    out.print(table)
    count = len(reply["entries"])
    out.print(f"{count} {'entry' if count == 1 else 'entries'}, newest first")


def _short(value: object) -> str:
    # Snapshot ids as the lists show them; lists without their brackets.
    if isinstance(value, list):
        return " ".join(map(str, value))
    text = str(value)
    is_id = len(text) == 64 and all(c in "0123456789abcdef" for c in text)
    return short_id(text) if is_id else text


def show_audit(args: argparse.Namespace) -> int:
    reply = call(
        args, "GET", "/api/emergency/audit", params={"limit": args.limit}, expect=("entries",)
    )
    emit(args, reply, _audit_table)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    status = command(commands, "status", "the service at a glance: state, incidents, breakers")
    status.set_defaults(handler=show_status)
    actions = command_group(
        commands,
        "minimal-mode",
        "minimal response mode of a running service",
        "minimal response mode: chat answers with short guidance, calls no agent",
    )
    ending = command(actions, "end", "end it now: chat calls the agents again")
    ending.set_defaults(handler=end_minimal_mode)
    audit = command(commands, "audit", "what was done to the state, and by whom")
    audit.add_argument(
        "--limit", type=whole_number(1, 1000), default=50, help="entries (1 to 1000)"
    )
    audit.set_defaults(handler=show_audit)
