"""What a batch of classified failures does to its incidents, as plain values.

Both incident stores (SQLite and PostgreSQL) read an incident's row, let ``merge_group`` say
what it becomes and which timeline entries the classifier adds, and write that back; the
stored span records are sampled by ``span_record_rows``. Grouping, reopening, trace id
merging and the weighted sample therefore behave the same on either database.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from service.incidents.model import OPENED, REOPENED, UPDATED, Incident
from telemetry.classifier import Classification
from telemetry.fingerprint import short_type
from telemetry.span_record import SpanRecord

CLASSIFICATION_COLUMNS = ("severity", "type", "impact", "recoverable", "protocol", "rule")
# What a later failure may change in an existing incident, in the order both stores write it.
MERGED_COLUMNS = (
    "status",
    "reopen_count",
    "opened_at",
    "acknowledged_at",
    "mitigated_at",
    "resolved_at",
    "recovery_time_s",
    *CLASSIFICATION_COLUMNS,
    "count",
    "last_seen",
    "message",
    "trace_ids",
)
MESSAGE_LIMIT = 1000
ID_ALPHABET = string.ascii_lowercase + string.digits

Group = list[tuple[SpanRecord, Classification]]
# One span_records row: at, incident id, classification JSON, record JSON, weight.
SpanRecordRow = tuple[float, str, str, str, int]


@dataclass(frozen=True)
class GroupOutcome:
    """What one batch did to one incident."""

    incident: Incident  # as it is after the batch
    outcome: str  # opened | reopened | updated
    classification: Classification
    record: SpanRecord  # the batch's latest failure of this incident


class StoredSpanRecord(NamedTuple):
    record: SpanRecord
    classification: dict[str, Any]  # as classified when it arrived
    weight: int  # how many failures of its batch this record stands for


class Merge(NamedTuple):
    """A group merged into its incident: the incident to write, what happened, and the
    classifier's timeline entries as (kind, message), in order."""

    incident: Incident
    outcome: str
    notes: list[tuple[str, str]]


def new_incident_id(now: float) -> str:
    return f"INC_{int(now * 1000)}_{''.join(random.choices(ID_ALPHABET, k=6))}"


def group_by_fingerprint(items: Sequence[tuple[SpanRecord, Classification]]) -> dict[str, Group]:
    groups: dict[str, Group] = {}
    for item in items:
        groups.setdefault(item[1].fingerprint, []).append(item)
    return groups


def merge_group(
    current: Incident | None,
    group: Group,
    now: float,
    max_trace_ids: int,
    new_id: Callable[[float], str],
) -> Merge:
    """``current`` (as read, or None when the fingerprint is new) after ``group``'s failures.
    ``current`` itself is changed and returned."""
    record, classification = group[-1]
    # Only the last few can survive the cap; the rest need not be looked at.
    recent_ids = [r.trace_id for r, _ in group[-max_trace_ids:] if r.trace_id]
    # Failures held through an outage of the store happened when they ended, not now.
    seen = [r.end_ns / 1e9 if "ers.held_s" in r.attributes else now for r, _ in group]
    began, last = min(seen), max(seen)
    if current is None:
        incident = _new_incident(record, classification, began, new_id(began))
        incident.last_seen = last
        incident.trace_ids = merge_trace_ids([], recent_ids, max_trace_ids)
        incident.count = len(group)
        return Merge(incident, OPENED, [("classified", classified_message(classification))])
    incident = current
    notes = []
    outcome = UPDATED
    resolved_at = incident.resolved_at or 0.0
    if incident.status == "resolved" and all(0 < r.end_ns <= resolved_at * 1e9 for r, _ in group):
        # Late arrivals (a sender's retry, a collector's backlog): failures that ended before
        # the resolution are counted on it, not taken for a recurrence. Their traces are
        # named with the others, so that what the note counts can be looked at, also after
        # a restart (an incident's traces are the ones the archive keeps).
        incident.count += len(group)
        # When they happened, for since=: a late one may have ended after the last seen.
        incident.last_seen = max(incident.last_seen, max(r.end_ns for r, _ in group) / 1e9)
        incident.trace_ids = merge_trace_ids(incident.trace_ids, recent_ids, max_trace_ids)
        note = f"{len(group)} failure(s) that ended before it was resolved arrived late; counted"
        return Merge(incident, UPDATED, [("note", note)])
    if incident.status == "resolved":
        outcome = REOPENED
        incident.status = "open"
        incident.reopen_count += 1
        incident.opened_at = began  # the failure's time when held through an outage
        incident.acknowledged_at = incident.mitigated_at = incident.resolved_at = None
        incident.recovery_time_s = None
        notes.append(("status_changed", "resolved → open: the error recurred"))
    if _classification_changed(incident, classification):
        _apply_classification(incident, classification)
        notes.append(("classified", classified_message(classification)))
    incident.count += len(group)
    incident.last_seen = max(incident.last_seen, last)
    incident.message = failure_message(record)
    incident.trace_ids = merge_trace_ids(incident.trace_ids, recent_ids, max_trace_ids)
    return Merge(incident, outcome, notes)


def failure_message(record: SpanRecord) -> str:
    """What an incident says of its failure: the exception's message; for a span that
    failed with no message (an HTTP instrumentation records a 5xx by its status code
    alone), the span's name and what its attributes say."""
    if record.exception_message:
        return record.exception_message[:MESSAGE_LIMIT]
    attributes = record.attributes
    status = attributes.get("http.response.status_code", attributes.get("http.status_code"))
    said = f"HTTP {status}" if status is not None else record.exception_type or "failed"
    return f"{record.name}: {said}"[:MESSAGE_LIMIT]


def _new_incident(
    record: SpanRecord, classification: Classification, now: float, incident_id: str
) -> Incident:
    incident = Incident(
        id=incident_id,
        fingerprint=classification.fingerprint,
        status="open",
        component=classification.component,
        source_service=record.service_name,
        span_name=record.name,
        exception_type=short_type(record.exception_type),
        message=failure_message(record),
        count=0,
        reopen_count=0,
        first_seen=now,
        last_seen=now,
        opened_at=now,
        severity="",
        type="",
        impact="",
        recoverable=True,
        protocol=None,
        rule="",
    )
    _apply_classification(incident, classification)
    return incident


def _classification_changed(incident: Incident, classification: Classification) -> bool:
    return any(
        getattr(incident, name) != getattr(classification, name) for name in CLASSIFICATION_COLUMNS
    )


def _apply_classification(incident: Incident, classification: Classification) -> None:
    for name in CLASSIFICATION_COLUMNS:
        setattr(incident, name, getattr(classification, name))


def classified_message(c: Classification) -> str:
    return (
        f"classified by rule {c.rule}: {c.severity} {c.type}, impact {c.impact}, "
        f"{'recoverable' if c.recoverable else 'not recoverable'}, "
        f"{f'protocol {c.protocol}' if c.protocol else 'no response protocol'}"
    )


def merge_trace_ids(current: list[str], new: list[str], limit: int) -> list[str]:
    """The most recent distinct trace ids, newest last."""
    merged = dict.fromkeys(current)
    for trace_id in new:
        merged.pop(trace_id, None)
        merged[trace_id] = None
    return list(merged)[-limit:]


def span_record_rows(
    outcomes: list[GroupOutcome],
    groups: dict[str, Group],
    now: float,
    limit: int,
    per_group: int,
) -> list[SpanRecordRow]:
    """The failures to store for replaying rules, at most ``limit`` of them.

    Of one incident's failures in one batch only the newest ``per_group`` are kept; the
    oldest kept row carries the weight of those skipped. In a storm this keeps hours of
    variety instead of the last second of one error, and keeps the write cheap.
    """
    incident_of = {o.classification.fingerprint: o.incident.id for o in outcomes}
    dumps = json.dumps
    rows: list[SpanRecordRow] = []
    for fingerprint, group in groups.items():
        kept = group[-per_group:]
        classification_json = dumps(kept[-1][1].to_dict())
        first_weight = len(group) - len(kept) + 1
        for position, (record, classification) in enumerate(kept):
            rows.append(
                (
                    now,
                    incident_of[fingerprint],
                    classification_json
                    if classification is kept[-1][1]
                    else dumps(classification.to_dict()),
                    dumps(record.to_dict(), separators=(",", ":")),
                    first_weight if position == 0 else 1,
                )
            )
    return rows[-limit:]


def stored_span_record(classification: str, record: str, weight: int) -> StoredSpanRecord:
    """A span_records row (its JSON columns as stored) as a value."""
    return StoredSpanRecord(
        SpanRecord.from_dict(json.loads(record)), json.loads(classification), weight
    )
