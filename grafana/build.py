"""Writes ERS's Grafana provisioning YAML and dashboards JSON; the committed files are its output.

python -m grafana.build           write the files
python -m grafana.build --check   exit 1 and list the files that differ from the builder
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from grafana.panels import (
    INCIDENTS_IN_RANGE,
    RATE,
    Json,
    color_by_name,
    dashboard,
    gauge,
    grown_in_range,
    hidden_variable,
    per_step,
    q,
    quantiles,
    query_variable,
    stat,
    state_timeline,
    table,
    timeseries,
    trace_search,
    traced_p95,
    value_text,
)
from grafana.sources import dashboard_provider, datasources

ROOT = Path(__file__).resolve().parent.parent
DATASOURCES_FILE = "grafana/provisioning/datasources/datasources.yaml"
PROVIDER_FILE = "grafana/provisioning/dashboards/dashboards.yaml"
DASHBOARDS_DIR = "grafana/dashboards"
SLO = "99.9%"
BUDGET = "0.001"

HTTP = "http_server_request_duration_seconds"
SERVED = 'http_route!~"/metrics|/livez|/readyz"'
AGENT = 'agent=~"$agent"'
# Tempo's span metrics of ERS's spans; the probes' server spans are left out as above.
# Tempo's label is the spans' service.name, ERS's service_name setting (ERS_SERVICE_NAME in
# compose): read from ERS's own target_info, which the OpenTelemetry exporter writes.
ERS_SPANS = 'service="$service"'
# (its default, "ers", until the dashboard has loaded it).
SERVICE = hidden_variable("service", 'label_values(target_info{job="ers"}, service_name)', "ers")
SERVED_SPANS = 'span_name!~"GET /(metrics|livez|readyz)"'
# The guarded calls' spans, agent.<name> (an agent's name has no dot): the fallback.<name>
# spans under them and agent.<name>.breaker carry the same ers.agent.
AGENT_SPANS = 'span_name=~"agent\\\\.[^.]+"'
MEMORY = ((None, "green"), (0.8, "orange"), (0.9, "red"))
ALARM = ((None, "green"), (1, "red"))
STATES = {"normal": "green", "degraded": "orange", "emergency": "red", "recovery": "blue"}
BREAKERS = {"closed": "green", "half_open": "yellow", "open": "red", "forced_open": "purple"}
BREAKERS["disabled"] = "text"
BUDGET_NOTE = (
    f"Share of the 30-day error budget still unspent: 1 - (bad chat requests / chat requests "
    f"over the last 30d) / {BUDGET} (SLO {SLO}). Computed over a true 30d window of "
    "ers_chat_requests_total, not approximated from rate3d; bad is outcome degraded, error or "
    "shed (turned away at capacity), as in the ers:chat_error_ratio rules. Prometheus keeps "
    "35d, so before the stack has run 30 days the window holds the data there is."
)
BURN_NOTE = (
    f"Chat error ratio per window over the error budget ({BUDGET}), from the "
    "ers:chat_error_ratio recording rules: 1 spends the budget in exactly 30 days; "
    "14.4 and 6 are the fast and slow burn lines."
)


# Dashboards read as tables, one panel per statement; the formatter would spread each call
# over a dozen lines.
# fmt: off
def system_health() -> Json:
    chat = "ers_chat_requests_total"
    requests = f"sum(rate({chat}{RATE}))"
    http = f"{HTTP}_count{{{SERVED}"
    errors = f'(sum(increase({chat}{{outcome=~"degraded|error|shed"}}[30d])) or vector(0))'
    budget = f"1 - {errors} / sum(increase({chat}[30d])) / {BUDGET}"
    burn = [q(f"ers:chat_error_ratio:rate{w} / {BUDGET}", w) for w in ("5m", "30m", "1h")]
    burn += [q(f"ers:chat_error_ratio:rate{w} / {BUDGET}", w) for w in ("2h", "6h", "1d", "3d")]
    panels = [
        stat("System state", "none", q("ers_system_state == 1", "{{state}}"), text="name",
             overrides=color_by_name(STATES)),
        stat("Uptime", "s", q("max(ers_uptime_seconds)")),
        # max: on PostgreSQL every replica exports the fleet's count.
        stat("Active incidents", "none",
             q("sum(max by (severity) (ers_incidents_active)) or vector(0)"), steps=ALARM),
        stat("Breakers by state", "none", q("sum by (state) (ers_breaker_state)", "{{state}}"),
             text="value_and_name", overrides=color_by_name(BREAKERS),
             description="How many agents' breakers are in each state."),
        gauge("Memory", "percentunit", q("max(ers_process_memory_ratio)"), steps=MEMORY,
              description="Share of the memory limit in use; 80% warns, 90% is critical."),
        timeseries("Memory against the 80% and 90% lines", "percentunit",
                   q("ers_process_memory_ratio", "memory"), steps=MEMORY, lines=True,
                   size=(9, 8)),
        stat("Last backup age", "s",
             q("time() - ers_backup_last_success_timestamp_seconds", "{{component}}"),
             text="value_and_name", size=(9, 8),
             description="Time since each component's last successful backup."),
        timeseries("Request rate", "reqps",
                   q(f"sum by (http_route) (rate({http}}}{RATE}))", "{{http_route}}")),
        timeseries("Error ratio", "percentunit",
                   q(f'(sum(rate({chat}{{outcome="error"}}{RATE})) or vector(0)) / {requests}',
                     "chat error"),
                   q(f'sum(rate({chat}{{outcome="degraded"}}{RATE})) / {requests}', "degraded"),
                   q(f'sum(rate({chat}{{outcome="shed"}}{RATE})) / {requests}', "shed"),
                   q(f'(sum(rate({http}, http_response_status_code=~"5.."}}{RATE})) or vector(0))'
                     f" / sum(rate({http}}}{RATE}))", "HTTP 5xx")),
        timeseries("Latency", "s", *quantiles(f"{HTTP}_bucket{{{SERVED}}}"),
                   traced_p95(f"{ERS_SPANS}, span_kind=\"SPAN_KIND_SERVER\", {SERVED_SPANS}"),
                   description="HTTP server latency over every route but the probes. The "
                   "traced line and its dots (exemplars) come from Tempo's span metrics; a dot "
                   "opens its trace."),
        timeseries("SLO burn rate", "none", *burn, lines=True, description=BURN_NOTE,
                   steps=((None, "green"), (1, "yellow"), (6, "orange"), (14.4, "red"))),
        stat("Error budget left (30d)", "percentunit", q(budget, instant=True),
             steps=((None, "red"), (0, "orange"), (0.25, "green")), description=BUDGET_NOTE,
             size=(12, 8)),
        timeseries("Chats waiting to start", "none", q("sum(ers_chat_waiting)", "waiting"),
                   description="Chats in line for their turn of the event loop. When the line "
                   "is full, chats are turned away with 503: the shed line of Error ratio."),
    ]
    return dashboard("ers-system-health", "ERS / System health",
                     "State, resources, traffic, latency and the chat SLO.", panels, [SERVICE])


def agents() -> Json:
    calls = f"ers_agent_calls_total{{{AGENT}"
    failed = f'sum by (agent) (rate({calls}, outcome=~"failure|timeout"}}{RATE}))'
    reached = f'sum by (agent) (rate({calls}, outcome!="rejected"}}{RATE}))'
    codes = {"closed": 0, "half_open": 1, "open": 2, "forced_open": 3, "disabled": 4}
    # One number per agent for the timeline: only the current state's series is 1.
    state = " or ".join(f'ers_breaker_state{{{AGENT}, state="{s}"}} * {c}'
                        for s, c in codes.items())
    state_text = {str(c): (s.replace("_", " "), BREAKERS[s]) for s, c in codes.items()}
    forced = f"ers_breaker_forced_opens_total{{{AGENT}}}"
    panels = [
        timeseries("Calls by outcome", "ops",
                   q(f"sum by (agent, outcome) (rate({calls}}}{RATE}))", "{{agent}} {{outcome}}")),
        timeseries("Error ratio", "percentunit",
                   q(f"{failed} / {reached}", "{{agent}}"),
                   description="Failures and timeouts over the calls that reached the agent, as "
                   "AgentErrorRatioHigh reads them: a breaker's rejections count in neither."),
        timeseries("Latency", "s",
                   *quantiles(f"ers_agent_call_duration_seconds_bucket{{{AGENT}}}", "agent",
                              "{{agent}} "),
                   traced_p95(f'{ERS_SPANS}, {AGENT_SPANS}, ers_agent=~"$agent"', "ers_agent",
                              "{{ers_agent}} "),
                   description="Agent call latency. The traced lines and their dots "
                   "(exemplars) come from Tempo's span metrics of the agent.<name> spans; a "
                   "dot opens its trace."),
        timeseries("Fallbacks", "ops", q(f"sum by (agent, kind) (rate(ers_fallbacks_total"
                                         f"{{{AGENT}}}{RATE}))", "{{agent}} {{kind}}"),
                   description="Answers given in an agent's place: agent (another agent of its "
                   "fallbacks chain answered), cached (its last good answer), generic (its "
                   "guidance)."),
        timeseries("Calls waiting for a slot", "none",
                   q(f"max by (agent) (ers_agent_calls_waiting{{{AGENT}}})", "{{agent}}"),
                   description="Calls in line for a slot of the agent's bulkhead "
                   "(max_concurrent_calls). One that waits longer than max_wait_s is answered "
                   "by a fallback: the rejected line of Calls by outcome."),
        state_timeline("Breaker state", q(f"max by (agent) ({state})", "{{agent}}"),
                       value_text(state_text)),
        timeseries("Breaker transitions", "none", per_step(
            "agent, to", f"ers_breaker_transitions_total{{{AGENT}}}", "{{agent}} to {{to}}"),
            bars=True),
        timeseries("Rejected calls", "ops", q(f"sum by (agent) (rate("
                                              f"ers_breaker_rejected_calls_total{{{AGENT}}}"
                                              f"{RATE}))", "{{agent}}"),
                   description="Calls refused by an open breaker."),
        timeseries("Forced opens by source", "none",
                   per_step("agent, source", forced, "{{agent}} by {{source}}"), bars=True),
        table("Forced opens in range", "none",
              q(f"sum by (agent, source) ({grown_in_range(forced)}) > 0"),
              columns={"Value": "forced opens"}),
    ]
    variables = [
        query_variable("agent", "Agent", "label_values(ers_agent_calls_total, agent)"),
        SERVICE,
    ]
    return dashboard("ers-agents", "ERS / Agents and breakers",
                     "Per-agent calls, errors, latency, fallbacks and circuit breakers.",
                     panels, variables)


def incidents() -> Json:
    recovery = "ers_incident_recovery_seconds"
    in_range = grown_in_range(f"{recovery}_bucket")
    mttr = (
        f"sum({grown_in_range(recovery + '_sum')}) / sum({grown_in_range(recovery + '_count')})"
    )
    actions = "ers_protocol_actions_total"
    panels = [
        stat("Active incidents", "none", q("max by (severity) (ers_incidents_active)",
                                           "{{severity}}"), text="value_and_name", steps=ALARM,
             size=(8, 4)),
        stat("Incidents in range", "none",
             q(f"sum({INCIDENTS_IN_RANGE}) or vector(0)", instant=True),
             size=(8, 4)),
        stat("Mean time to recover", "s", q(mttr, instant=True), size=(8, 4)),
        timeseries("Incidents by severity", "none",
                   per_step("severity", "ers_incidents_total", "{{severity}}"), bars=True),
        timeseries("Incidents by type", "none",
                   per_step("type", "ers_incidents_total", "{{type}}"), bars=True),
        timeseries("Time to recover", "s",
                   *quantiles(f"{recovery}_bucket", "severity", "{{severity}} "),
                   description="Drawn where incidents recovered; the table covers the range."),
        table("Time to recover by severity in range", "s",
              q(f"histogram_quantile(0.5, sum by (severity, le) ({in_range}))"),
              q(f"histogram_quantile(0.95, sum by (severity, le) ({in_range}))"),
              columns={"Value #A": "p50", "Value #B": "p95"}),
        timeseries("Protocol actions", "none", per_step(
            "protocol, action, result", actions, "{{protocol}} {{action}} {{result}}"), bars=True),
        table("Protocol actions in range", "none",
              q(f"sum by (protocol, action, result) ({grown_in_range(actions)}) > 0"),
              columns={"Value": "actions"}),
        timeseries("Span classification", "none",
                   q(f"sum(rate(ers_spans_classified_total{RATE}))", "classified per second"),
                   q(f"sum(increase(ers_incident_spans_dropped_total{RATE}))", "dropped"),
                   q(f"sum(increase(ers_incident_spans_failed_total{RATE}))", "not written"),
                   q(f"sum(increase(ers_incident_spans_joined_total{RATE}))", "joined"),
                   description="Dropped: the queue was full; not written: see the log; "
                   "joined: other services' spans around a failure already counted."),
        table("Incidents by component in range", "none",
              q(f"sum by (severity, type, component) ({INCIDENTS_IN_RANGE}) > 0"),
              columns={"Value": "incidents"}),
        trace_search("Error traces", "{ status = error }",
                     description="Recent traces with an error span; a trace id opens the trace "
                     "in Tempo. ERS lists each incident's trace ids at "
                     "/api/emergency/incidents/{id}."),
    ]
    return dashboard("ers-incidents", "ERS / Incidents",
                     "Incidents, recovery times, protocol actions and their traces.", panels)


def backups() -> Json:
    age = "time() - ers_backup_last_success_timestamp_seconds"
    drill = {"1": ("passed", "green"), "0": ("failed", "red")}
    failures = "sum(increase(ers_backup_failures_total[$__range])) or vector(0)"
    panels = [
        stat("Last success age", "s", q(age, "{{component}}"), text="value_and_name",
             size=(12, 5)),
        stat("Age over backup interval", "none",
             q(f"({age}) / ers_backup_interval_seconds", "{{component}}"),
             text="value_and_name", steps=((None, "green"), (1.5, "orange"), (2, "red")),
             size=(12, 5),
             description="Above 1 the next scheduled backup is due; above 2 one was missed."),
        stat("Snapshots", "none", q("max(ers_backup_snapshots)")),
        stat("Last restore drill", "none", q("min(ers_restore_drill_success)"),
             mappings=value_text(drill), steps=((None, "red"), (1, "green"))),
        stat("Last verified", "s", q("time() - max(ers_backup_last_verified_timestamp_seconds)")),
        stat("Failures in range", "none", q(failures, instant=True), steps=ALARM),
        timeseries("Backup duration", "s", *quantiles("ers_backup_duration_seconds_bucket"),
                   description="All components together: the histogram has no component label."),
        timeseries("Bytes added", "bytes",
                   per_step("", "ers_backup_added_bytes_total", "added"), bars=True),
        timeseries("Failures by reason", "none",
                   per_step("reason", "ers_backup_failures_total", "{{reason}}"), bars=True),
        timeseries("Snapshot count", "none", q("max(ers_backup_snapshots)", "snapshots")),
        timeseries("Rollbacks by result", "none",
                   per_step("result", "ers_rollbacks_total", "{{result}}"), bars=True),
        timeseries("Rollback duration", "s", *quantiles("ers_rollback_duration_seconds_bucket")),
    ]
    return dashboard("ers-backups", "ERS / Backups",
                     "restic backups, restore drills and rollbacks.", panels)


def dashboards() -> list[Json]:
    return [system_health(), agents(), incidents(), backups()]


# fmt: on
def escape_dollars(value: Any) -> Any:
    """Grafana expands $VAR and ${VAR} in provisioning files; $$ stands for a literal $."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, dict):
        return {k: escape_dollars(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape_dollars(v) for v in value]
    return value


def render_yaml(data: Json) -> str:
    header = "# Generated by `python -m grafana.build`; edit grafana/build.py instead.\n"
    return header + yaml.safe_dump(escape_dollars(data), sort_keys=False, width=1000)


def render_json(data: Json) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def rendered_files() -> dict[str, str]:
    """Every generated file, by its path relative to the repository root."""
    files = {
        DATASOURCES_FILE: render_yaml(datasources()),
        PROVIDER_FILE: render_yaml(dashboard_provider()),
    }
    for board in dashboards():
        files[f"{DASHBOARDS_DIR}/{board['uid']}.json"] = render_json(board)
    return files


def stale_dashboards(root: Path, files: dict[str, str]) -> list[str]:
    present = sorted((root / DASHBOARDS_DIR).glob("*.json"))
    return [rel for p in present if (rel := p.relative_to(root).as_posix()) not in files]


def differing(root: Path) -> list[str]:
    """Files under root that are missing, differ from the builder, or are no longer built."""
    files = rendered_files()
    changed = [
        rel
        for rel, text in files.items()
        if not (root / rel).is_file() or (root / rel).read_text(encoding="utf-8") != text
    ]
    return sorted(changed + stale_dashboards(root, files))


def write(root: Path) -> list[str]:
    files = rendered_files()
    for rel in stale_dashboards(root, files):
        (root / rel).unlink()
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return sorted(files)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grafana.build", description=__doc__)
    parser.add_argument("--check", action="store_true", help="list differing files, exit 1")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root to write into")
    args = parser.parse_args(argv)
    if not args.check:
        for rel in write(args.root):
            print(f"wrote {rel}")
        return 0
    stale = differing(args.root)
    for rel in stale:
        print(f"differs from the builder: {rel}")
    if stale:
        print("run `python -m grafana.build` and commit the result", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
