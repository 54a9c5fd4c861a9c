"""An incident's trace link, as the stack of compose.yaml serves it: Grafana where compose
publishes it, the Tempo data source grafana/ provisions, over the time Tempo keeps traces."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from service.settings import Settings
from service.web.routes.incidents import trace_link_template
from tests.compose import merge

ROOT = Path(__file__).resolve().parents[2]
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def go_duration(text: str) -> timedelta:
    """A Go duration of whole units, as Tempo reads block_retention ("336h", "1h30m")."""
    parts = re.findall(r"(\d+)([hms])", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"{text!r}: not understood"
    return timedelta(seconds=sum(int(n) * UNITS[u] for n, u in parts))


def grafana_lookback(relative: str) -> timedelta:
    """How far back Grafana's relative time ``now-<n><unit>`` reaches."""
    found = re.fullmatch(r"now-(\d+)([smhdw])", relative)
    assert found, f"{relative!r} is no relative time Grafana reads"
    return timedelta(seconds=int(found[1]) * UNITS[found[2]])


def tempo_data_source() -> dict[str, Any]:
    text = (ROOT / "grafana/provisioning/datasources/datasources.yaml").read_text()
    (tempo,) = [s for s in yaml.safe_load(text)["datasources"] if s["type"] == "tempo"]
    return tempo


@pytest.fixture
def link(monkeypatch: pytest.MonkeyPatch) -> str:
    ers = merge.load(ROOT / "compose.yaml")["services"]["ers"]
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_ENDPOINT", ers["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    )
    template = trace_link_template(Settings(trace_url_template=None))
    assert template is not None, "with a collector, incidents link their traces"
    return template.format(trace_id=TRACE_ID)


def explore_pane(link: str) -> dict[str, Any]:
    query = parse_qs(urlsplit(link).query)
    assert query["schemaVersion"] == ["1"], "Grafana 10+ reads Explore's panes at schema 1"
    (pane,) = json.loads(query["panes"][0]).values()
    return pane


def test_the_link_opens_grafana_where_compose_publishes_it(link: str) -> None:
    (published,) = merge.load(ROOT / "compose.yaml")["services"]["grafana"]["ports"]
    host, port, _ = published.split(":")
    parts = urlsplit(link)
    assert (parts.scheme, parts.hostname, parts.port) == ("http", host, int(port))
    assert parts.path == "/explore"


def test_the_link_looks_the_trace_up_in_the_provisioned_tempo(link: str) -> None:
    uid = tempo_data_source()["uid"]
    pane = explore_pane(link)
    assert pane["datasource"] == uid
    (query,) = pane["queries"]
    assert query["datasource"] == {"type": "tempo", "uid": uid}
    # Grafana's Tempo data source takes a TraceQL query of hex digits alone for a trace id.
    assert query["queryType"] == "traceql" and query["query"] == TRACE_ID


def test_the_link_finds_every_trace_tempo_still_keeps(link: str) -> None:
    """With traceQuery.timeShiftEnabled the data source asks Tempo for the trace within
    Explore's range (start and end, widened by the shifts), and Tempo searches only the blocks
    inside it: a range shorter than block_retention turns an older incident's trace into
    "trace not found" while Tempo still has it."""
    tempo = yaml.safe_load((ROOT / "deploy/tempo.yaml").read_text())
    retention = go_duration(tempo["compactor"]["compaction"]["block_retention"])
    assert tempo_data_source()["jsonData"]["traceQuery"]["timeShiftEnabled"] is True
    window = explore_pane(link)["range"]
    assert window["to"] == "now"
    assert grafana_lookback(window["from"]) >= retention, window
