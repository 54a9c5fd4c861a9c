"""``ers incidents``, ``ers trace`` and ``ers classify``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from service.cli.remote import add_connection_options, call, print_json, run_remote


def _incident_line(i: dict[str, Any]) -> str:
    c = i["classification"]
    return (
        f"{i['id']}  {i['status']:<12} {c['severity']:<8} {c['type']:<10} "
        f"{i['component']:<12} x{i['count']:<5} {i['message'][:60]}"
    )


@run_remote
def incidents(args: argparse.Namespace) -> int:
    action = args.action
    if action == "list":
        query = {
            k: v
            for k, v in (
                ("status", args.status),
                ("severity", args.severity),
                ("component", args.component),
            )
            if v
        }
        path = "/api/emergency/incidents" + (
            "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
        )
        data = call(args, "GET", path)
        if args.json:
            print_json(data)
        else:
            print(f"{data['total']} incidents")
            for incident in data["incidents"]:
                print(_incident_line(incident))
        return 0
    if action == "show":
        data = call(args, "GET", f"/api/emergency/incidents/{args.incident_id}")
        if args.json:
            print_json(data)
            return 0
        print(_incident_line(data))
        print(f"protocol: {data['response']['protocol']}  traces: {', '.join(data['traceIds'])}")
        for entry in data["timeline"]:
            print(f"  {entry['at']}  {entry['kind']:<16} {entry['who']:<14} {entry['message']}")
        return 0
    if action == "acknowledge":
        data = call(
            args,
            "POST",
            f"/api/emergency/incidents/{args.incident_id}/acknowledge",
            {"note": args.note},
        )
    else:
        data = call(
            args,
            "POST",
            f"/api/emergency/incidents/{args.incident_id}/resolve",
            {"resolution": args.resolution},
        )
    print_json(data) if args.json else print(_incident_line(data))
    return 0


def draw_tree(spans: list[dict[str, Any]], depth: int = 0) -> list[str]:
    lines = []
    for span in spans:
        failed = span["status"]["code"] == "ERROR"
        mark = "✗" if failed else "·"
        detail = f"  {span['status']['message']}" if failed and span["status"]["message"] else ""
        lines.append(f"{'  ' * depth}{mark} {span['name']}  {span['durationMs']:.2f} ms{detail}")
        lines.extend(draw_tree(span.get("children", []), depth + 1))
    return lines


@run_remote
def trace(args: argparse.Namespace) -> int:
    data = call(args, "GET", f"/api/emergency/traces/{args.trace_id}")
    if args.json:
        print_json(data)
    else:
        print(f"trace {data['traceId']}: {data['spanCount']} spans, {data['errorSpans']} failed")
        print("\n".join(draw_tree(data["spans"])))
    return 0


# What `ers classify --explain` reads; only "name" is required.
SPAN_SHAPE = (
    '{"name": ..., "status": {"code": "ERROR", "message": ...}, "attributes": {...}, '
    '"events": [{"name": "exception", "attributes": {...}}]}'
)


def classify(args: argparse.Namespace) -> int:
    from telemetry.classifier import RulesError, load_rules, replay_stored
    from telemetry.span_record import SpanRecord

    try:
        classifier = load_rules(args.rules)
    except RulesError as exc:
        print(f"ers: {exc}", file=sys.stderr)
        return 2
    if args.explain:
        try:
            record = SpanRecord.from_dict(json.loads(Path(args.explain).read_text()))
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
            print(
                f"ers: cannot read a span record from {args.explain}: {exc!r}; the file holds "
                f"one span, as `ers trace TRACE_ID --json` lists them: {SPAN_SHAPE}",
                file=sys.stderr,
            )
            return 2
        explanation = classifier.explain(record)
        if args.json:
            print_json(explanation.to_dict())
        else:
            print("\n".join(explanation.lines()))
        return 0
    from service.settings import load_settings
    from telemetry.incident_lifecycle import IncidentStoreBase
    from telemetry.incident_model import IncidentStoreUnavailable
    from telemetry.incident_pg import PgIncidentStore
    from telemetry.incident_store import IncidentStore

    settings = load_settings()
    store: IncidentStoreBase
    if settings.database_url is not None:
        try:
            store = PgIncidentStore(settings.database_url.get_secret_value())
        except IncidentStoreUnavailable as exc:
            print(f"ers: {exc}", file=sys.stderr)
            return 2
    else:
        path = settings.data_dir / "incidents.sqlite3"
        if not path.exists():
            print(f"ers: no incidents database at {path}", file=sys.stderr)
            return 2
        store = IncidentStore(path)
    try:
        summary = replay_stored(store.stored_span_records(), classifier)
    finally:
        store.close()
    if args.json:
        print_json(summary.to_dict())
    else:
        print(
            f"{summary.total} stored error spans: {summary.changed} would be classified "
            f"differently, {summary.regrouped} would join another incident"
        )
        for change, info in (summary.changes or {}).items():
            print(f"  {info['count']:>5}  {change}  (e.g. {info['example']})")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("incidents", help="incidents of a running service")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list")
    listing.add_argument(
        "--status", choices=["active", "open", "acknowledged", "mitigated", "resolved"]
    )
    listing.add_argument("--severity", choices=["low", "medium", "high", "critical"])
    listing.add_argument("--component")
    show = actions.add_parser("show", help="an incident with its timeline")
    ack = actions.add_parser("acknowledge")
    ack.add_argument("--note", default="")
    resolve = actions.add_parser("resolve")
    resolve.add_argument("--resolution", required=True)
    for sub in (show, ack, resolve):
        sub.add_argument("incident_id")
    for sub in (listing, show, ack, resolve):
        add_connection_options(sub)
        sub.set_defaults(handler=incidents)

    trace_cmd = commands.add_parser("trace", help="a kept trace drawn as a tree")
    trace_cmd.add_argument("trace_id")
    add_connection_options(trace_cmd)
    trace_cmd.set_defaults(handler=trace)

    classify_cmd = commands.add_parser("classify", help="try classification rules")
    target = classify_cmd.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--explain",
        metavar="FILE.json",
        help="which rule a span matches, why (one span, as `ers trace TRACE_ID --json` lists them)",
    )
    target.add_argument(
        "--against-stored", action="store_true", help="replay the rules over stored error spans"
    )
    classify_cmd.add_argument("--rules", type=Path, help="rules file (default: shipped rules)")
    classify_cmd.add_argument("--json", action="store_true")
    classify_cmd.set_defaults(handler=classify)
