"""Writing a batch of classified failures into incidents: one row read and one row write per
fingerprint per batch, which is what lets an error storm be recorded at full speed."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from telemetry.classifier import Classification
from telemetry.fingerprint import short_type
from telemetry.incident_db import insert_timeline
from telemetry.incident_model import OPENED, REOPENED, UPDATED, Incident
from telemetry.span_record import SpanRecord

CLASSIFICATION_COLUMNS = ("severity", "type", "impact", "recoverable", "protocol", "rule")
MESSAGE_LIMIT = 1000


@dataclass(frozen=True)
class GroupOutcome:
    """What one batch did to one incident."""

    incident: Incident  # as it is after the batch
    outcome: str  # opened | reopened | updated
    occurrences: int  # failures of this batch grouped into the incident
    classification: Classification
    record: SpanRecord  # the batch's latest failure of this incident


def group_by_fingerprint(
    items: Sequence[tuple[SpanRecord, Classification]],
) -> dict[str, list[tuple[SpanRecord, Classification]]]:
    groups: dict[str, list[tuple[SpanRecord, Classification]]] = {}
    for item in items:
        groups.setdefault(item[1].fingerprint, []).append(item)
    return groups


def write_groups(
    db: sqlite3.Connection,
    groups: dict[str, list[tuple[SpanRecord, Classification]]],
    now: float,
    max_trace_ids: int,
    new_id: Callable[[float], str],
) -> list[GroupOutcome]:
    outcomes = []
    for fingerprint, group in groups.items():
        row = db.execute("SELECT * FROM incidents WHERE fingerprint = ?", (fingerprint,)).fetchone()
        record, classification = group[-1]
        # Only the last few can survive the cap; the rest need not be looked at.
        recent_ids = [r.trace_id for r, _ in group[-max_trace_ids:] if r.trace_id]
        if row is None:
            incident = _new_incident(record, classification, now, new_id(now))
            incident.trace_ids = _merge_ids([], recent_ids, max_trace_ids)
            incident.count = len(group)
            _insert(db, incident)
            _timeline(db, incident.id, now, "classified", _classified_message(classification))
            outcome = OPENED
        else:
            incident = Incident.from_row(row)
            outcome = _update(db, incident, group, recent_ids, now, max_trace_ids)
        outcomes.append(GroupOutcome(incident, outcome, len(group), classification, record))
    return outcomes


def _update(
    db: sqlite3.Connection,
    incident: Incident,
    group: list[tuple[SpanRecord, Classification]],
    recent_ids: list[str],
    now: float,
    max_trace_ids: int,
) -> str:
    record, classification = group[-1]
    outcome = UPDATED
    if incident.status == "resolved":
        outcome = REOPENED
        incident.status = "open"
        incident.reopen_count += 1
        incident.opened_at = now
        incident.acknowledged_at = incident.mitigated_at = incident.resolved_at = None
        incident.recovery_time_s = None
        _timeline(db, incident.id, now, "status_changed", "resolved → open: the error recurred")
    if _classification_changed(incident, classification):
        _apply_classification(incident, classification)
        _timeline(db, incident.id, now, "classified", _classified_message(classification))
    incident.count += len(group)
    incident.last_seen = now
    incident.message = record.exception_message[:MESSAGE_LIMIT]
    incident.trace_ids = _merge_ids(incident.trace_ids, recent_ids, max_trace_ids)
    db.execute(
        "UPDATE incidents SET status = ?, reopen_count = ?, opened_at = ?, acknowledged_at = ?, "
        "mitigated_at = ?, resolved_at = ?, recovery_time_s = ?, severity = ?, type = ?, "
        "impact = ?, recoverable = ?, protocol = ?, rule = ?, count = ?, last_seen = ?, "
        "message = ?, trace_ids = ? WHERE id = ?",
        (
            incident.status,
            incident.reopen_count,
            incident.opened_at,
            incident.acknowledged_at,
            incident.mitigated_at,
            incident.resolved_at,
            incident.recovery_time_s,
            incident.severity,
            incident.type,
            incident.impact,
            int(incident.recoverable),
            incident.protocol,
            incident.rule,
            incident.count,
            incident.last_seen,
            incident.message,
            json.dumps(incident.trace_ids),
            incident.id,
        ),
    )
    return outcome


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
        message=record.exception_message[:MESSAGE_LIMIT],
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


def _insert(db: sqlite3.Connection, incident: Incident) -> None:
    values = dict(vars(incident))
    values["recoverable"] = int(incident.recoverable)
    values["trace_ids"] = json.dumps(incident.trace_ids)
    columns = ", ".join(values)
    placeholders = ", ".join(f":{name}" for name in values)
    db.execute(f"INSERT INTO incidents ({columns}) VALUES ({placeholders})", values)


def _classification_changed(incident: Incident, classification: Classification) -> bool:
    return any(
        getattr(incident, name) != getattr(classification, name) for name in CLASSIFICATION_COLUMNS
    )


def _apply_classification(incident: Incident, classification: Classification) -> None:
    for name in CLASSIFICATION_COLUMNS:
        setattr(incident, name, getattr(classification, name))


def _classified_message(c: Classification) -> str:
    return (
        f"classified by rule {c.rule}: {c.severity} {c.type}, impact {c.impact}, "
        f"{'recoverable' if c.recoverable else 'not recoverable'}, protocol {c.protocol}"
    )


def _timeline(db: sqlite3.Connection, incident_id: str, at: float, kind: str, text: str) -> None:
    insert_timeline(db, incident_id, at, kind, "classifier", text)


class StoredSpanRecord(NamedTuple):
    record: SpanRecord
    classification: dict[str, Any]  # as classified when it arrived
    weight: int  # how many failures of its batch this record stands for


def keep_span_records(
    db: sqlite3.Connection,
    outcomes: list[GroupOutcome],
    groups: dict[str, list[tuple[SpanRecord, Classification]]],
    now: float,
    limit: int,
    per_group: int,
) -> None:
    """Store the failures themselves, for replaying rules, keeping the newest ``limit`` rows.

    Of one incident's failures in one batch only the newest ``per_group`` are written; the
    oldest written row carries the weight of those skipped. In a storm this keeps hours of
    variety instead of the last second of one error, and keeps the write cheap.
    """
    incident_of = {o.classification.fingerprint: o.incident.id for o in outcomes}
    dumps = json.dumps
    rows = []
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
    db.executemany(
        "INSERT INTO span_records (at, incident_id, classification, record, weight) "
        "VALUES (?, ?, ?, ?, ?)",
        rows[-limit:],
    )
    db.execute(
        "DELETE FROM span_records WHERE seq <= (SELECT MAX(seq) FROM span_records) - ?", (limit,)
    )


def read_span_records(
    db: sqlite3.Connection, limit: int | None, incident_id: str | None
) -> list[StoredSpanRecord]:
    where, params = ("WHERE incident_id = ?", [incident_id]) if incident_id else ("", [])
    rows = db.execute(
        f"SELECT classification, record, weight FROM span_records {where} "
        "ORDER BY seq DESC LIMIT ?",
        [*params, -1 if limit is None else limit],
    )
    found = [
        StoredSpanRecord(
            SpanRecord.from_dict(json.loads(row["record"])),
            json.loads(row["classification"]),
            row["weight"],
        )
        for row in rows
    ]
    found.reverse()
    return found


def _merge_ids(current: list[str], new: list[str], limit: int) -> list[str]:
    """The most recent distinct trace ids, newest last."""
    merged = dict.fromkeys(current)
    for trace_id in new:
        merged.pop(trace_id, None)
        merged[trace_id] = None
    return list(merged)[-limit:]
