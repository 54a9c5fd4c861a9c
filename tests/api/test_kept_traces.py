"""Trace links lead to the trace: a degraded chat reply names its trace, and incidents link
Grafana's Tempo view when traces go to a collector."""

from __future__ import annotations

import json
from urllib.parse import unquote

import httpx
import pytest

from service.settings import Settings
from service.web.routes.incidents import trace_link_template


async def test_a_degraded_chat_reply_carries_its_trace_id_and_the_trace_is_kept(
    client: httpx.AsyncClient,
) -> None:
    fault = {"component": "budget", "errorType": "database", "message": "ledger table locked"}
    assert (await client.post("/api/emergency/simulate-error", json=fault)).status_code == 200
    reply = await client.post("/chat", json={"message": "budget report", "userId": "u1"})
    body = reply.json()
    assert body["emergency"] is True
    trace = await client.get(f"/api/emergency/traces/{body['traceId']}")
    assert trace.status_code == 200, trace.text
    spans = json.dumps(trace.json()["spans"])
    assert "agent.budget" in spans and "ledger table locked" in spans


async def test_a_fallback_given_without_calling_the_agent_is_not_a_kept_trace(
    client: httpx.AsyncClient,
) -> None:
    """As the README says: nothing failed in it, so a flood of them cannot push the traces
    of real failures out of the keeper."""
    forced = {"reason": "checking by hand", "ttlSeconds": 600}
    opened = await client.post("/api/emergency/circuit-breaker/workout/force-open", json=forced)
    assert opened.status_code == 200, opened.text
    reply = await client.post("/chat", json={"message": "strength plan", "userId": "u1"})
    body = reply.json()
    assert body["emergency"] is True and body["traceId"], body
    trace = await client.get(f"/api/emergency/traces/{body['traceId']}")
    assert trace.status_code == 404 and "not kept" in trace.text, trace.text


def test_with_a_collector_an_incident_links_its_trace_in_grafana_tempo(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert trace_link_template(settings) is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4318")
    template = trace_link_template(settings)
    assert template is not None
    link = unquote(template.format(trace_id="ab" * 16))
    assert link.startswith("http://127.0.0.1:3000/explore?")
    assert '"uid":"ers-tempo"' in link and f'"query":"{"ab" * 16}"' in link
    own = settings.model_copy(update={"trace_url_template": "https://t.example/{trace_id}"})
    assert trace_link_template(own) == "https://t.example/{trace_id}"


@pytest.mark.parametrize(
    ("template", "why"),
    [("https://t.example/{id}", "no other braces"), ("https://t.example/x", "has no {trace_id}")],
)
def test_a_trace_link_template_without_its_placeholder_stops_start_up(
    template: str, why: str
) -> None:
    from service.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="trace_url_template") as raised:
        load_settings(trace_url_template=template)
    assert why in str(raised.value)
