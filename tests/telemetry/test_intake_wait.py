"""How long POST /v1/traces waits for its error spans, and what its 503 then means: spans
the incident pipeline has not taken in time are withdrawn (none recorded, the retry counts
once); spans whose write is under way are waited for and answered 200, never a 503 that a
late write would make wrong."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
import yaml
from fastapi import HTTPException

from service.web.routes import intake
from telemetry.classifier import Classifier
from telemetry.incident_processor import IncidentProcessor
from tests.telemetry.conftest import HeldStore, error_record


@pytest.fixture
def held(tmp_path: Path, default_classifier: Classifier):
    store = HeldStore(tmp_path / "incidents.db")
    processor = IncidentProcessor(store, default_classifier, linger_s=0)
    yield store, processor
    store.release.set()
    processor.shutdown()
    store.close()


async def test_spans_not_taken_in_time_are_withdrawn_and_answered_503(
    held: tuple[HeldStore, IncidentProcessor], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, processor = held
    monkeypatch.setattr(intake, "TAKE_WAIT_S", 0.3)
    busy = processor.submit_records([error_record(message="an earlier request")])
    await asyncio.sleep(0.2)  # the worker holds the earlier request's spans in the store
    with pytest.raises(HTTPException) as refused:
        await intake._written(processor, [error_record(message="late") for _ in range(4)])
    assert refused.value.status_code == 503
    assert "did not take the 4 error spans within 0.3 s" in refused.value.detail
    assert "none of them was recorded" in refused.value.detail
    store.release.set()
    assert busy.result(10)
    assert processor.force_flush()
    incidents, _ = store.list()
    assert sum(incident.count for incident in incidents) == 1  # the four were not written


async def test_a_write_under_way_is_waited_for_and_answered_200(
    held: tuple[HeldStore, IncidentProcessor], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, processor = held
    monkeypatch.setattr(intake, "TAKE_WAIT_S", 0.3)
    loop = asyncio.get_running_loop()
    loop.call_later(1.0, store.release.set)  # the write takes longer than TAKE_WAIT_S
    started = time.monotonic()
    await intake._written(processor, [error_record() for _ in range(3)])  # no 503
    assert time.monotonic() - started >= 0.9
    incidents, _ = store.list()
    assert sum(incident.count for incident in incidents) == 3


async def test_a_write_that_never_ends_gets_the_503_that_says_it_may_land(
    held: tuple[HeldStore, IncidentProcessor], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, processor = held
    monkeypatch.setattr(intake, "TAKE_WAIT_S", 0.2)
    monkeypatch.setattr(intake, "WRITE_WAIT_S", 0.3)
    with pytest.raises(HTTPException) as refused:
        await intake._written(processor, [error_record()])
    assert refused.value.status_code == 503
    assert "still being written after 0.5 s; they may yet be" in refused.value.detail
    # The store keeps each request's key with what it wrote: a retry does not count twice.
    assert "a retry is then not counted again" in refused.value.detail
    assert "twice" not in refused.value.detail


def test_the_wait_ends_before_the_collector_and_the_balancer_give_up() -> None:
    """Past their 30 s the sender has resent: a 200 or 503 after it reaches no one."""
    root = Path(__file__).resolve().parents[2]
    collector = yaml.safe_load((root / "telemetry/otelcol.yaml").read_text())
    exporter_timeout_s = 30.0  # otlphttp's default; otelcol.yaml sets none
    assert "timeout" not in collector["exporters"]["otlphttp/ers"]
    balancer = (root / "compose/lb/nginx.conf").read_text()
    found = re.search(r"proxy_read_timeout (\d+)s;", balancer)
    assert found is not None
    read_timeout_s = float(found.group(1))
    waited_s = intake.TAKE_WAIT_S + intake.WRITE_WAIT_S
    assert waited_s < min(exporter_timeout_s, read_timeout_s)
