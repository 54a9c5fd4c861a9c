"""Grafana's provisioned data sources and dashboard provider: what the dashboards query, and
where Grafana finds them. grafana/build.py writes them as YAML."""

from __future__ import annotations

from grafana.panels import (
    ALERTMANAGER_UID,
    EXEMPLAR_TRACE_ID_LABEL,
    PROMETHEUS_UID,
    TEMPO_UID,
    Json,
)

# Where compose mounts grafana/dashboards inside the Grafana container.
CONTAINER_DASHBOARDS_DIR = "/var/lib/grafana/dashboards"
FOLDER_UID = "ers"
# Prometheus scrapes ERS every 15s; Grafana must not ask for finer steps than that.
SCRAPE_INTERVAL = "15s"


# Data sources read as tables, one source per statement; the formatter would spread each
# over a dozen lines.
# fmt: off
def datasources() -> Json:
    tags = [{"key": "ers.agent", "value": "agent"}]  # the span attribute and the metric label
    agent_queries = [
        {"name": "Agent calls", "query": "sum by (agent, outcome) "
         "(rate(ers_agent_calls_total{$__tags}[5m]))"},
        {"name": "Agent p95 latency", "query": "histogram_quantile(0.95, sum by (le) "
         "(rate(ers_agent_call_duration_seconds_bucket{$__tags}[5m])))"},
    ]
    # Exemplars reach Prometheus from Tempo's span metrics alone (grafana/panels.py says why),
    # with the trace id in the label Tempo's generator names it.
    exemplars = [{"name": EXEMPLAR_TRACE_ID_LABEL, "datasourceUid": TEMPO_UID,
                  "urlDisplayLabel": "Trace ${__value.raw}"}]
    prometheus = {"timeInterval": SCRAPE_INTERVAL, "httpMethod": "POST",
                  "exemplarTraceIdDestinations": exemplars}
    tempo = {
        "tracesToMetrics": {"datasourceUid": PROMETHEUS_UID, "tags": tags,
                            "spanStartTimeShift": "-5m", "spanEndTimeShift": "5m",
                            "queries": agent_queries},
        "serviceMap": {"datasourceUid": PROMETHEUS_UID},
        "nodeGraph": {"enabled": True},
        "search": {"hide": False},
        "traceQuery": {"timeShiftEnabled": True, "spanStartTimeShift": "-30m",
                       "spanEndTimeShift": "30m"},
    }
    alertmanager = {"implementation": "prometheus", "handleGrafanaManagedAlerts": False}
    sources = [
        ("Prometheus", "prometheus", PROMETHEUS_UID, "http://prometheus:9090", prometheus),
        ("Tempo", "tempo", TEMPO_UID, "http://tempo:3200", tempo),
        ("Alertmanager", "alertmanager", ALERTMANAGER_UID, "http://alertmanager:9093",
         alertmanager),
    ]
    return {"apiVersion": 1, "datasources": [
        {"name": name, "type": kind, "uid": uid, "access": "proxy", "url": url,
         "isDefault": kind == "prometheus", "editable": False, "jsonData": json_data}
        for name, kind, uid, url, json_data in sources
    ]}


def dashboard_provider() -> Json:
    provider = {"name": "ers", "orgId": 1, "type": "file", "folder": "ERS",
                "folderUid": FOLDER_UID, "disableDeletion": True, "allowUiUpdates": False,
                "updateIntervalSeconds": 30,
                "options": {"path": CONTAINER_DASHBOARDS_DIR, "foldersFromFilesStructure": False}}
    return {"apiVersion": 1, "providers": [provider]}
# fmt: on
