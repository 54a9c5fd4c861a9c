"""The telemetry providers' resource: what names this process in every span and series."""

from __future__ import annotations

import uuid

import pytest

from telemetry.providers import build_telemetry


def instance_id(monkeypatch: pytest.MonkeyPatch, attributes: str | None) -> str:
    if attributes is None:
        monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    else:
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", attributes)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    telemetry = build_telemetry("ers", "1.0", enabled=False)
    try:
        assert telemetry.resource.attributes["service.name"] == "ers"
        return str(telemetry.resource.attributes["service.instance.id"])
    finally:
        telemetry.shutdown()


def test_the_instance_id_compose_gives_a_replica_names_its_spans(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """compose sets service.instance.id=ers-2 for a replica; a random id given in code
    overrode it, so traces could not be told apart by replica and the id changed at every
    restart."""
    assert instance_id(monkeypatch, "service.instance.id=ers-2,deployment.environment=prod") == (
        "ers-2"
    )


def test_without_one_each_process_gets_a_random_instance_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = instance_id(monkeypatch, None), instance_id(monkeypatch, "team=ops")
    assert first != second
    assert uuid.UUID(first) and uuid.UUID(second)
