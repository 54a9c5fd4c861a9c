"""``ers incidents``, ``ers trace`` and ``ers classify``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from service.cli.output import USAGE, CliError, cell, emit, joined, new_table, note, stdout, when
from service.cli.remote import call, command, command_group, exchange, segment, whole_number
from service.errors import ARCHIVE_NOT_READ


def _incident_row(i: dict[str, Any]) -> list[str]:
    c = i["classification"]
    return [
        i["id"],
        i["status"],
        c["severity"],
        c["type"],
        i["component"],
        str(i["count"]),
        when(i.get("lastSeen") or i.get("firstSeen")),
        cell(i["message"]),
    ]


INCIDENT_COLUMNS = (
    "ID",
    "STATUS",
    "SEVERITY",
    "TYPE",
    "COMPONENT",
    "COUNT",
    "LAST SEEN",
    "MESSAGE",
)


LIST_KEYS = ("incidents", "total")
INCIDENT_KEYS = ("id", "status", "classification", "component", "count", "message")
TRACE_KEYS = ("traceId", "spanCount", "errorSpans", "spans")


def _incident_list(out: Console, data: dict[str, Any]) -> None:
    table = new_table(*INCIDENT_COLUMNS)
    shown = data["incidents"]
    for incident in shown:
        table.add_row(*_incident_row(incident))
    out.print(table)
    total = f"{data['total']} incident{'' if data['total'] == 1 else 's'}"
    if len(shown) < data["total"]:
        first = data.get("offset", 0) + 1
        out.print(
            f"{first}-{first + len(shown) - 1} of {total}, newest first "
            "(--limit, --offset for others)"
            if shown
            else f"none of {total} from offset {first - 1}"
        )
    else:
        out.print(total)


def _incident(out: Console, data: dict[str, Any]) -> None:
    table = new_table(*INCIDENT_COLUMNS)
    table.add_row(*_incident_row(data))
    out.print(table)
    response = data.get("response") or {}
    protocol = response.get("protocol") or "-"  # none for an alert's incident
    out.print(f"protocol: {protocol}  traces: {joined(data.get('traceIds'))}")
    timeline = data.get("timeline")
    if timeline:
        out.print("timeline:")
        steps = new_table("AT", "KIND", "WHO", "MESSAGE")
        for entry in timeline:
            steps.add_row(when(entry["at"]), entry["kind"], entry["who"], entry["message"])
        out.print(steps)


def incidents(args: argparse.Namespace) -> int:
    action = args.action
    if action == "list":
        query = {
            k: v
            for k, v in (
                ("status", args.status),
                ("severity", args.severity),
                ("component", args.component),
                ("since", args.since),
                ("limit", args.limit),
                ("offset", args.offset),
            )
            if v is not None
        }
        listed = call(args, "GET", "/api/emergency/incidents", params=query, expect=LIST_KEYS)
        emit(args, listed, _incident_list)
        return 0
    path = f"/api/emergency/incidents/{segment(args.incident_id)}"
    if action == "show":
        emit(args, call(args, "GET", path, expect=INCIDENT_KEYS), _incident)
        return 0
    if action == "acknowledge":
        data = call(args, "POST", f"{path}/acknowledge", {"note": args.note}, expect=INCIDENT_KEYS)
        done = f"acknowledged {data['id']} at {when(data.get('acknowledgedAt'))}"
    else:
        body = {"resolution": args.resolution}
        data = call(args, "POST", f"{path}/resolve", body, expect=INCIDENT_KEYS)
        done = f"resolved {data['id']} at {when(data.get('resolvedAt'))}: {args.resolution}"
        if data.get("released"):
            done += f"; released the isolation of {', '.join(data['released'])}"
        if data.get("minimalModeEnded"):
            done += "; chat left minimal mode"

    def confirmed(out: Console, incident: dict[str, Any]) -> None:
        out.print(done)
        _incident(out, incident)

    emit(args, data, confirmed)
    return 0


def draw_tree(spans: list[dict[str, Any]], tree: Tree) -> Tree:
    for span in spans:
        failed = span["status"]["code"] == "ERROR"
        message = span["status"].get("message") or _exception_words(span)
        label = Text("✗ " if failed else "· ", style="red" if failed else "dim")
        label.append(f"{span['name']}  {span['durationMs']:.2f} ms")
        if failed and message:
            label.append(f"  {message}", style="red")
        draw_tree(span.get("children", []), tree.add(label))
    return tree


def _exception_words(span: dict[str, Any]) -> str:
    """The last exception a span recorded, for one whose status has no message."""
    for event in reversed(span.get("events") or []):
        if event.get("name") == "exception":
            found = event.get("attributes") or {}
            return ": ".join(
                str(found[k]) for k in ("exception.type", "exception.message") if found.get(k)
            )
    return ""


def _trace(out: Console, data: dict[str, Any]) -> None:
    title = f"trace {data['traceId']}: {data['spanCount']} spans, {data['errorSpans']} failed"
    out.print(draw_tree(data["spans"], Tree(title, guide_style="dim")))


def trace(args: argparse.Namespace) -> int:
    path = f"/api/emergency/traces/{segment(args.trace_id)}"
    data, headers = exchange(args, "GET", path, expect=TRACE_KEYS)
    emit(args, data, _trace)
    if unread := headers.get(ARCHIVE_NOT_READ):  # what the service holds is shown all the same
        note(
            f"only the spans in the service's memory ({unread}): spans kept before a restart "
            "or by another replica may be missing"
        )
    return 0


# What `ers classify --explain` reads; only "name" is required.
SPAN_SHAPE = (
    '{"name": ..., "status": {"code": "ERROR", "message": ...}, "attributes": {...}, '
    '"events": [{"name": "exception", "attributes": {...}}]}'
)


def _explanation(out: Console, data: Any) -> None:
    out.print("\n".join(data.lines()))


def _replay(out: Console, summary: Any) -> None:
    out.print(
        f"{summary.total} stored error spans: {summary.changed} would be classified "
        f"differently, {summary.regrouped} would join another incident"
    )
    if summary.changes:
        table = new_table("SPANS", "CHANGE", "EXAMPLE")
        for change, info in summary.changes.items():
            table.add_row(str(info["count"]), change, str(info["example"]))
        out.print(table)


def _emit_value(args: argparse.Namespace, value: Any, draw: Any) -> None:
    """For values with a ``to_dict``: the dict for scripts, ``draw`` for people."""
    if getattr(args, "output", "table") == "table":
        draw(stdout(), value)
    else:
        emit(args, value.to_dict(), lambda out, data: None)


def classify(args: argparse.Namespace) -> int:
    from service.incidents.alert_payload import ALERT_RULE
    from service.settings import load_settings
    from telemetry.classifier import RulesError, load_rules, replay_stored

    settings = load_settings()
    # Without --rules: the rules the service classifies with (its setting, else the shipped).
    try:
        classifier = load_rules(args.rules or settings.classification_rules)
    except RulesError as exc:
        raise CliError(str(exc), USAGE) from None
    if args.explain:
        whole_trace, records = _span_records(args.explain)
        explained = [(span, classifier.explain(record)) for span, record in records]
        if not whole_trace:
            _emit_value(args, explained[0][1], _explanation)
        else:
            data = [_explained(span, e) for span, e in explained]
            emit(args, data, _draw_explained(explained))
        return 0
    from service.incidents.model import IncidentStoreUnavailable
    from service.incidents.store import IncidentStore
    from service.incidents.store_pg import PgIncidentStore

    store: IncidentStore
    if settings.database_url is not None:
        try:
            store = PgIncidentStore(settings.database_url.get_secret_value())
        except IncidentStoreUnavailable as exc:
            raise CliError(str(exc), USAGE) from None
    else:
        path = settings.data_dir / "incidents.sqlite3"
        if not path.exists():
            raise CliError(
                f"no incidents database at {path}; run where the service keeps its data "
                "(ERS_DATA_DIR)",
                USAGE,
            )
        store = IncidentStore(path)
    try:
        stored = store.stored_span_records()
    finally:
        store.close()
    # An alert's incident is classified by the alert's labels, not by the rules.
    by_rules = [s for s in stored if _rule_of(s[1]) != ALERT_RULE]
    summary = replay_stored(by_rules, classifier)
    left_out = len(stored) - len(by_rules)

    def draw(out: Console, _: Any) -> None:
        _replay(out, summary)
        if left_out:
            out.print(
                f"{left_out} span{'s' if left_out > 1 else ''} of Alertmanager alerts left"
                " out: their alerts' labels classify them, not the rules"
            )

    emit(args, {**summary.to_dict(), "alertSpansLeftOut": left_out}, draw)
    return 0


def _rule_of(classification: Any) -> str:
    rule = getattr(classification, "rule", None)
    return str(rule if rule is not None else dict(classification).get("rule"))


def _explained(span: dict[str, Any], explanation: Any) -> dict[str, Any]:
    return {"span": span["name"], "spanId": span.get("spanId"), **explanation.to_dict()}


def _draw_explained(explained: list[tuple[dict[str, Any], Any]]) -> Any:
    def draw(out: Console, _: Any) -> None:
        for number, (span, explanation) in enumerate(explained):
            heading = f"span {span['name']} ({span.get('spanId')}):"
            out.print(("\n" if number else "") + heading)
            out.print("\n".join(explanation.lines()))

    return draw


def _failing(spans: list[Any]) -> list[dict[str, Any]]:
    """The failing spans of a trace's tree, parents before their children (depth first,
    without recursion: a tree may be deeper than Python's stack)."""
    found: list[dict[str, Any]] = []
    waiting = list(reversed(spans))
    while waiting:
        span = waiting.pop()
        if isinstance(span, dict):
            status = span.get("status")
            if isinstance(status, dict) and status.get("code") == "ERROR":
                found.append(span)
            children = span.get("children")
            if isinstance(children, list):
                waiting.extend(reversed(children))
    return found


def _span_records(source: str) -> tuple[bool, list[tuple[dict[str, Any], Any]]]:
    """The span in ``source`` (a file, or ``-`` for stdin), or every failing span of a
    trace as ``ers trace TRACE_ID -o json`` prints it (then True first); CliError in words
    otherwise."""
    from telemetry.span_record import SpanRecord

    where = "stdin" if source == "-" else source
    cannot = f"cannot read a span record from {where}"
    advice = (
        "the file holds one span, as `ers trace TRACE_ID -o json` lists them, or that "
        f"command's whole output: {SPAN_SHAPE}"
    )
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
        document = json.loads(text)
    except OSError as exc:
        raise CliError(f"{cannot}: {exc.strerror}", USAGE) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CliError(f"{cannot}: it is not JSON ({exc}); {advice}", USAGE) from None
    except RecursionError:
        raise CliError(f"{cannot}: its JSON is nested deeper than it can be read", USAGE) from None
    whole_trace = isinstance(document, dict) and isinstance(document.get("spans"), list)
    if whole_trace:
        spans = _failing(document["spans"])
        if not spans:
            raise CliError(
                f"{cannot}: the trace {document.get('traceId', '')} has no failing span; "
                "put the one span to explain in a file of its own",
                USAGE,
            )
    elif isinstance(document, dict) and isinstance(document.get("name"), str):
        spans = [document]
    else:
        raise CliError(f'{cannot}: it is no JSON object with a "name"; {advice}', USAGE)
    try:
        return whole_trace, [(span, SpanRecord.from_dict(span)) for span in spans]
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        raise CliError(f"{cannot}: {exc}; {advice}", USAGE) from None


STATUSES = ["active", "open", "acknowledged", "mitigated", "resolved"]


def register(commands: argparse._SubParsersAction) -> None:
    actions = command_group(commands, "incidents", "incidents of a running service")
    listing = command(actions, "list", "incidents, newest first, with filters")
    listing.add_argument("--status", choices=STATUSES, help="only incidents in this state")
    listing.add_argument(
        "--severity", choices=["low", "medium", "high", "critical"], help="only this severity"
    )
    listing.add_argument("--component", help="only incidents of this component")
    listing.add_argument(
        "--since",
        help="only those last seen at or after this ISO-8601 time (UTC without an offset)",
    )
    listing.add_argument(
        "--limit", type=whole_number(1, 500), default=50, help="at most this many (1 to 500)"
    )
    listing.add_argument(
        "--offset",
        type=whole_number(0, 1_000_000),
        default=0,
        help="skip this many newest first (0 to 1000000)",
    )
    show = command(actions, "show", "an incident with its timeline")
    ack = command(
        actions,
        "acknowledge",
        "a person is on it, on the timeline; it stays active (its alerts keep firing) until"
        " resolved",
    )
    ack.add_argument("--note", default="", help="kept on the timeline")
    resolve = command(actions, "resolve", "close an incident with what fixed it")
    resolve.add_argument("--resolution", required=True, help="what fixed it, kept on the timeline")
    for sub in (show, ack, resolve):
        sub.add_argument("incident_id", help="INC_... as `ers incidents list` shows it")
    for sub in (listing, show, ack, resolve):
        sub.set_defaults(handler=incidents)

    trace_cmd = command(commands, "trace", "a kept trace drawn as a tree")
    trace_cmd.add_argument("trace_id", help="32 hex digits, as an incident's traces list them")
    trace_cmd.set_defaults(handler=trace)

    classify_cmd = command(commands, "classify", "try classification rules on spans")
    target = classify_cmd.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--explain",
        metavar="FILE.json",
        help="which rule a span matches, why (one span, as `ers trace TRACE_ID -o json` "
        "lists them, or that command's output: each failing span; - reads stdin)",
    )
    target.add_argument(
        "--against-stored",
        action="store_true",
        help="replay the rules over the stored error spans (reads ERS_DATA_DIR or "
        "ERS_DATABASE_URL)",
    )
    classify_cmd.add_argument(
        "--rules",
        type=Path,
        help="rules file (default: the service's ERS_CLASSIFICATION_RULES, else the shipped rules)",
    )
    classify_cmd.set_defaults(handler=classify)
