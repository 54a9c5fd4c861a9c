"""The dashboards' Prometheus queries as Prometheus receives them, for the tests that run or
check them."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from grafana.build import dashboards

GRAFANA_INTERVALS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def promql(expr: str, variables: Sequence[Mapping[str, Any]]) -> str:
    """The expression as Prometheus would receive it: Grafana's interval variables at fixed
    values, every dashboard variable at its "All" value, or at its default if it has none."""
    values = {v["name"]: ".*" if v.get("includeAll") else v["current"]["value"] for v in variables}

    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name in GRAFANA_INTERVALS:
            return GRAFANA_INTERVALS[name]
        if name in values:
            return str(values[name])
        raise ValueError(f"{expr!r} uses ${name}, which its dashboard does not define")

    return VARIABLE.sub(value, expr)


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL as Prometheus receives it) for every Prometheus
    query of every dashboard: Grafana's $__rate_interval is 5m, $__interval 1m, $__range 1h,
    and dashboard variables are at their "All" value."""
    queries = []
    for board in dashboards():
        variables = board["templating"]["list"]
        for panel in board["panels"]:
            for target in panel["targets"]:
                if "expr" in target:
                    expr = promql(target["expr"], variables)
                    queries.append((board["uid"], panel["title"], expr))
    return queries
