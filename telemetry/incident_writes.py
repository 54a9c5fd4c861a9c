"""Writing a batch of classified failures into the SQLite incidents file: one row read and
one row write per fingerprint per batch, which is what lets an error storm be recorded at
full speed. What a batch does to an incident is decided in ``incident_merge``."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from telemetry.incident_db import insert_timeline
from telemetry.incident_merge import (
    MERGED_COLUMNS,
    Group,
    GroupOutcome,
    StoredSpanRecord,
    group_by_fingerprint,
    merge_group,
    span_record_rows,
    stored_span_record,
)
from telemetry.incident_model import OPENED, Incident

UPDATE_SQL = (
    f"UPDATE incidents SET {', '.join(f'{name} = ?' for name in MERGED_COLUMNS)} WHERE id = ?"
)


def write_groups(
    db: sqlite3.Connection,
    groups: dict[str, Group],
    now: float,
    max_trace_ids: int,
    new_id: Callable[[float], str],
) -> list[GroupOutcome]:
    outcomes = []
    for fingerprint, group in groups.items():
        row = db.execute("SELECT * FROM incidents WHERE fingerprint = ?", (fingerprint,)).fetchone()
        current = None if row is None else Incident.from_row(row)
        incident, outcome, notes = merge_group(current, group, now, max_trace_ids, new_id)
        if outcome == OPENED:
            _insert(db, incident)
        else:
            db.execute(UPDATE_SQL, (*_values(incident, MERGED_COLUMNS), incident.id))
        for kind, text in notes:
            insert_timeline(db, incident.id, now, kind, "classifier", text)
        record, classification = group[-1]
        outcomes.append(GroupOutcome(incident, outcome, len(group), classification, record))
    return outcomes


def _values(incident: Incident, columns: tuple[str, ...]) -> list[object]:
    values: list[object] = [getattr(incident, name) for name in columns]
    for position, name in enumerate(columns):
        if name == "recoverable":
            values[position] = int(incident.recoverable)
        elif name == "trace_ids":
            values[position] = json.dumps(incident.trace_ids)
    return values


def _insert(db: sqlite3.Connection, incident: Incident) -> None:
    columns = tuple(vars(incident))
    placeholders = ", ".join("?" * len(columns))
    db.execute(
        f"INSERT INTO incidents ({', '.join(columns)}) VALUES ({placeholders})",
        _values(incident, columns),
    )


def keep_span_records(
    db: sqlite3.Connection,
    outcomes: list[GroupOutcome],
    groups: dict[str, Group],
    now: float,
    limit: int,
    per_group: int,
) -> None:
    """Store the batch's sampled failures (see ``span_record_rows``), keeping the newest
    ``limit`` rows."""
    db.executemany(
        "INSERT INTO span_records (at, incident_id, classification, record, weight) "
        "VALUES (?, ?, ?, ?, ?)",
        span_record_rows(outcomes, groups, now, limit, per_group),
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
        stored_span_record(row["classification"], row["record"], row["weight"]) for row in rows
    ]
    found.reverse()
    return found


__all__ = [
    "GroupOutcome",
    "StoredSpanRecord",
    "group_by_fingerprint",
    "keep_span_records",
    "read_span_records",
    "write_groups",
]
