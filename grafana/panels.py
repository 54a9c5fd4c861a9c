"""Panel and dashboard builders: one small function per Grafana panel type.

A panel function returns the panel's JSON with its size but no position; ``dashboard`` lays
panels out left to right, wrapping at Grafana's 24-column grid. Options Grafana already
defaults to (last value, area graph, legend at the bottom) are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PROMETHEUS_UID = "ers-prometheus"
TEMPO_UID = "ers-tempo"
ALERTMANAGER_UID = "ers-alertmanager"
PROMETHEUS = {"type": "prometheus", "uid": PROMETHEUS_UID}
TEMPO = {"type": "tempo", "uid": TEMPO_UID}
# Exemplars, the trace ids Grafana links a latency point to, come from Tempo's metrics
# generator alone: its span-metrics histogram (remote-written to Prometheus with
# send_exemplars, deploy/tempo.yaml) puts the trace id in an exemplar label named traceID.
# ERS's own /metrics carries none (opentelemetry-exporter-prometheus writes no exemplars).
# The Prometheus datasource's exemplar destination must use the same name.
SPAN_LATENCY = "traces_spanmetrics_latency_bucket"
EXEMPLAR_TRACE_ID_LABEL = "traceID"
# Grafana 11's dashboard schema; Grafana migrates older ones on load, never newer ones.
SCHEMA_VERSION = 39
GRID_COLUMNS = 24

Json = dict[str, Any]
# (lower bound, colour) pairs; the first bound is None, meaning minus infinity.
Steps = Sequence[tuple[float | None, str]]
GREEN: Steps = ((None, "green"),)


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = "__auto"
    # Instant queries evaluate once, at the end of the range: right for "now" and totals.
    instant: bool = False
    # Also fetch the exemplars of the series the expression reads (a range query only).
    exemplar: bool = False


def q(expr: str, legend: str = "__auto", instant: bool = False, exemplar: bool = False) -> Query:
    return Query(expr, legend, instant, exemplar)


def value_text(mapping: dict[str, tuple[str, str]]) -> list[Json]:
    """Value mappings from a raw value to (text, colour)."""
    options = {
        value: {"text": text, "color": color, "index": i}
        for i, (value, (text, color)) in enumerate(mapping.items())
    }
    return [{"type": "value", "options": options}]


def color_by_name(colors: dict[str, str]) -> list[Json]:
    return [
        {
            "matcher": {"id": "byName", "options": name},
            "properties": [{"id": "color", "value": {"fixedColor": color, "mode": "fixed"}}],
        }
        for name, color in colors.items()
    ]


def _targets(queries: Sequence[Query], table: bool) -> list[Json]:
    targets = []
    for ref, query in zip("ABCDEFGHIJ", queries, strict=False):
        target: Json = {"datasource": PROMETHEUS, "expr": query.expr, "refId": ref}
        target["legendFormat"] = query.legend
        if query.instant or table:
            target.update(instant=True, range=False)
        if table:
            target["format"] = "table"
        if query.exemplar:
            target["exemplar"] = True
        targets.append(target)
    return targets


def _panel(
    kind: str,
    title: str,
    queries: Sequence[Query],
    defaults: Json,
    *,
    description: str = "",
    size: tuple[int, int],
    overrides: Sequence[Json] = (),
    **rest: Any,
) -> Json:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": PROMETHEUS,
        "targets": _targets(queries, table=kind == "table"),
        "fieldConfig": {"defaults": defaults, "overrides": list(overrides)},
        "gridPos": {"w": size[0], "h": size[1]},
        **rest,
    }


def _thresholds(steps: Steps) -> Json:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


def timeseries(
    title: str,
    unit: str,
    *queries: Query,
    steps: Steps = GREEN,
    lines: bool = False,
    bars: bool = False,
    description: str = "",
    size: tuple[int, int] = (12, 8),
) -> Json:
    """``lines`` draws the thresholds as lines; ``bars`` stacks bars, for counts per step."""
    custom: Json = {"thresholdsStyle": {"mode": "line" if lines else "off"}}
    if bars:
        custom.update(drawStyle="bars", fillOpacity=60, stacking={"group": "A", "mode": "normal"})
    defaults = {"unit": unit, "min": 0, "thresholds": _thresholds(steps), "custom": custom}
    return _panel("timeseries", title, queries, defaults, description=description, size=size)


def stat(
    title: str,
    unit: str,
    *queries: Query,
    steps: Steps = GREEN,
    mappings: Sequence[Json] = (),
    overrides: Sequence[Json] = (),
    text: str = "auto",
    description: str = "",
    size: tuple[int, int] = (6, 4),
) -> Json:
    """``text`` is Grafana's text mode: "name" shows the series name, e.g. the current state."""
    defaults = {"unit": unit, "thresholds": _thresholds(steps), "mappings": list(mappings)}
    options = {"colorMode": "background", "graphMode": "none", "textMode": text}
    return _panel(
        "stat",
        title,
        queries,
        defaults,
        description=description,
        size=size,
        overrides=overrides,
        options=options,
    )


def gauge(
    title: str,
    unit: str,
    *queries: Query,
    steps: Steps = GREEN,
    description: str = "",
    size: tuple[int, int] = (6, 8),
) -> Json:
    defaults = {"unit": unit, "min": 0, "max": 1, "thresholds": _thresholds(steps)}
    return _panel("gauge", title, queries, defaults, description=description, size=size)


def table(
    title: str,
    unit: str,
    *queries: Query,
    columns: dict[str, str] | None = None,
    description: str = "",
    size: tuple[int, int] = (12, 8),
) -> Json:
    """Instant results, one row per label set; ``columns`` renames the value columns."""
    organize = {"excludeByName": {"Time": True}, "renameByName": columns or {}}
    transformations = [{"id": "merge", "options": {}}, {"id": "organize", "options": organize}]
    return _panel(
        "table",
        title,
        queries,
        {"unit": unit},
        description=description,
        size=size,
        transformations=transformations,
    )


def state_timeline(
    title: str, query: Query, mappings: Sequence[Json], size: tuple[int, int] = (24, 7)
) -> Json:
    defaults = {"mappings": list(mappings), "color": {"mode": "thresholds"}}
    return _panel("state-timeline", title, [query], defaults, size=size)


def trace_search(title: str, traceql: str, *, description: str = "", limit: int = 20) -> Json:
    """A Tempo TraceQL search table whose trace ids open the trace in Explore."""
    link = {
        "title": "Open trace in Tempo",
        "url": "",
        "internal": {
            "datasourceUid": TEMPO_UID,
            "datasourceName": "Tempo",
            "query": {"query": "${__value.raw}", "queryType": "traceql"},
        },
    }
    target = {"datasource": TEMPO, "queryType": "traceql", "query": traceql, "refId": "A"}
    target.update(limit=limit, tableType="traces")
    # The Tempo data source's traces table names this field traceID and shows it as "Trace ID"
    # (its displayNameFromDS); the byName matcher takes a field's name as well as its shown one.
    trace_id = {"id": "byName", "options": "traceID"}
    return {
        **_panel("table", title, [], {}, description=description, size=(24, 10)),
        "datasource": TEMPO,
        "targets": [target],
        "fieldConfig": {
            "defaults": {},
            "overrides": [{"matcher": trace_id, "properties": [{"id": "links", "value": [link]}]}],
        },
    }


def query_variable(name: str, label: str, query: str) -> Json:
    """A multi-value label variable whose "All" is the regex .* (queries use =~)."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": PROMETHEUS,
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def hidden_variable(name: str, query: str, default: str) -> Json:
    """A single-value label variable the dashboard fills in itself when it loads (``default``
    until then): nothing to choose, so not shown."""
    return {
        "name": name,
        "type": "query",
        "datasource": PROMETHEUS,
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 1,
        "hide": 2,
        "includeAll": False,
        "multi": False,
        "current": {"selected": False, "text": default, "value": default},
    }


def layout(panels: Sequence[Json]) -> list[Json]:
    """Place panels in reading order and number them."""
    placed: list[Json] = []
    x = y = row_height = 0
    for panel_id, panel in enumerate(panels, start=1):
        w, h = panel["gridPos"]["w"], panel["gridPos"]["h"]
        if x + w > GRID_COLUMNS:
            x, y, row_height = 0, y + row_height, 0
        placed.append({**panel, "id": panel_id, "gridPos": {"x": x, "y": y, "w": w, "h": h}})
        x += w
        row_height = max(row_height, h)
    return placed


def dashboard(
    uid: str, title: str, description: str, panels: Sequence[Json], variables: Sequence[Json] = ()
) -> Json:
    # Every ERS dashboard links to the others through the shared tag, keeping the time range.
    links = [
        {
            "type": "dashboards",
            "tags": ["ers"],
            "asDropdown": True,
            "title": "ERS",
            "icon": "external link",
            "includeVars": False,
            "keepTime": True,
            "targetBlank": False,
            "tooltip": "",
        }
    ]
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["ers"],
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "annotations": {"list": []},
        "templating": {"list": list(variables)},
        "links": links,
        "panels": layout(panels),
    }


# --- PromQL shapes the dashboards share ---------------------------------------------

RATE_WINDOW = "$__rate_interval"
RATE = f"[{RATE_WINDOW}]"
# A series unseen this long before a window is new in it (``grown_in``).
NEW_AFTER = "1h"


def quantiles(bucket: str, by: str = "", legend: str = "") -> list[Query]:
    """p50, p95 and p99 over each $__rate_interval. histogram_quantile() reads the buckets'
    growth (``grown_in``), not their rate: the quantiles are the same, and a histogram's first
    observations (a first rollback, a first recovery) count."""
    group = f"{by}, le" if by else "le"
    grown = f"sum by ({group}) ({grown_in(bucket, RATE_WINDOW)})"
    return [q(f"histogram_quantile({p / 100}, {grown})", f"{legend}p{p}") for p in (50, 95, 99)]


def traced_p95(selector: str, by: str = "", legend: str = "") -> Query:
    """p95 of span durations from Tempo's span metrics, with their exemplars: each dot on the
    panel is one span, and its trace opens in Tempo."""
    group = f"{by}, le" if by else "le"
    rate = f"sum by ({group}) (rate({SPAN_LATENCY}{{{selector}}}{RATE}))"
    return q(f"histogram_quantile(0.95, {rate})", f"{legend}p95 of traced spans", exemplar=True)


def grown_in(series: str, window: str) -> str:
    """How much a counter (or histogram series) grew over ``window``.

    increase() cannot count a series' first sample, and a counter of rare events (incidents,
    breaker transitions, forced opens, rollbacks, protocol actions, recoveries) first appears
    already at 1, so its first event would never show: a series with no sample in the
    ``NEW_AFTER`` before the window counts with its whole value. present_over_time() skips
    staleness markers, and the hour outlasts a scrape outage, so neither a failed scrape nor
    minutes without one make an old series look new (with the $__rate_interval before the
    window, a gap of two drew a lifetime's count as new events)."""
    new = f"{series} unless present_over_time({series}[{NEW_AFTER}] offset {window})"
    return f"(({new}) or increase({series}[{window}]))"


def grown_in_range(series: str) -> str:
    """How much a counter (or histogram series) grew over the dashboard's range."""
    return grown_in(series, "$__range")


INCIDENTS_IN_RANGE = grown_in_range("ers_incidents_total")


def per_step(by: str, counter: str, legend: str) -> Query:
    """Counts per $__rate_interval, the first event of each series included."""
    grouping = f"sum by ({by})" if by else "sum"
    return q(f"{grouping} ({grown_in(counter, RATE_WINDOW)})", legend)
