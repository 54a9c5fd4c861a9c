"""When an incident opened: the time a rollback "before the incident" goes back to."""

from __future__ import annotations

from service.incidents.merge import merge_group
from service.incidents.model import OPENED, REOPENED
from telemetry.classifier import Classifier
from tests.telemetry.conftest import error_record

PROCESSED_AT = 1_800_000_000.0  # long after the failures (2023): written after an outage


def test_a_failure_held_through_an_outage_reopens_its_incident_at_its_own_time(
    default_classifier: Classifier,
) -> None:
    """Reopened at the time it was written, the incident's episode began after the backups
    taken since the failure, and a rollback before it went back to one holding that failure's
    state."""
    held = {"ers.held_s": 30.0}
    first = error_record(attributes=held)
    merged = merge_group(
        None, [(first, default_classifier.classify(first))], PROCESSED_AT, 50, lambda _: "INC-1"
    )
    assert merged.outcome == OPENED and merged.incident.opened_at == first.end_ns / 1e9
    incident = merged.incident
    incident.status, incident.resolved_at = "resolved", first.end_ns / 1e9 + 0.0001
    again = error_record(attributes=held)
    assert again.end_ns / 1e9 > incident.resolved_at
    reopened = merge_group(
        incident, [(again, default_classifier.classify(again))], PROCESSED_AT, 50, str
    )
    assert reopened.outcome == REOPENED
    assert reopened.incident.opened_at == again.end_ns / 1e9
