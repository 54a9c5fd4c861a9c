"""Writing a batch of classified failures into the PostgreSQL incidents schema, safely
while other replicas write the same fingerprints.

Each fingerprint's row is locked (``SELECT … FOR NO KEY UPDATE``, the lock of an update that
leaves the key alone) until the batch commits, so two replicas merging into one incident
take turns and no count is lost. A new fingerprint is inserted with ``ON CONFLICT
(fingerprint) DO NOTHING``: when another replica opened it a moment earlier, its row is
locked and merged into instead, so the same failure from two replicas is one incident.
Fingerprints are locked in sorted order, one order for every replica, so two batches never
wait on each other in a circle. What a batch does to an incident is decided in
``incident_merge``, as for SQLite.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg.rows import DictRow

from telemetry.incident_merge import (
    MERGED_COLUMNS,
    Group,
    GroupOutcome,
    StoredSpanRecord,
    merge_group,
    span_record_rows,
    stored_span_record,
)
from telemetry.incident_model import OPENED, Incident

Cursor = psycopg.Cursor[DictRow]


def write_groups(
    cursor: Cursor,
    schema: str,
    groups: dict[str, Group],
    now: float,
    max_trace_ids: int,
    new_id: Callable[[float], str],
) -> list[GroupOutcome]:
    """Run inside a transaction; outcomes in the order of ``groups``."""
    by_fingerprint: dict[str, GroupOutcome] = {}
    for fingerprint in sorted(groups):
        group = groups[fingerprint]
        current = _locked(cursor, schema, fingerprint)
        incident, outcome, notes = merge_group(current, group, now, max_trace_ids, new_id)
        if outcome == OPENED and not _insert(cursor, schema, incident):
            # Another replica opened it since we looked: merge into theirs.
            current = _locked(cursor, schema, fingerprint)
            incident, outcome, notes = merge_group(current, group, now, max_trace_ids, new_id)
        if outcome != OPENED:
            assignments = ", ".join(f"{name} = %s" for name in MERGED_COLUMNS)
            cursor.execute(
                f"UPDATE {schema}.incidents SET {assignments} WHERE id = %s",
                (*_values(incident, MERGED_COLUMNS), incident.id),
            )
        for kind, text in notes:
            insert_timeline(cursor, schema, incident.id, now, kind, "classifier", text, {})
        record, classification = group[-1]
        by_fingerprint[fingerprint] = GroupOutcome(
            incident, outcome, len(group), classification, record
        )
    return [by_fingerprint[fingerprint] for fingerprint in groups]


def _locked(cursor: Cursor, schema: str, fingerprint: str) -> Incident | None:
    cursor.execute(
        f"SELECT * FROM {schema}.incidents WHERE fingerprint = %s FOR NO KEY UPDATE", (fingerprint,)
    )
    row = cursor.fetchone()
    return None if row is None else Incident.from_row(row)


def _insert(cursor: Cursor, schema: str, incident: Incident) -> bool:
    """False when the fingerprint exists already (another replica inserted it)."""
    columns = tuple(vars(incident))
    cursor.execute(
        f"INSERT INTO {schema}.incidents ({', '.join(columns)}) "
        f"VALUES ({', '.join(['%s'] * len(columns))}) "
        "ON CONFLICT (fingerprint) DO NOTHING RETURNING id",
        _values(incident, columns),
    )
    return cursor.fetchone() is not None


def _values(incident: Incident, columns: Sequence[str]) -> list[Any]:
    return [
        json.dumps(incident.trace_ids) if name == "trace_ids" else getattr(incident, name)
        for name in columns
    ]


def insert_timeline(
    cursor: Cursor,
    schema: str,
    incident_id: str,
    at: float,
    kind: str,
    actor: str,
    message: str,
    data: dict[str, Any],
) -> int:
    cursor.execute(
        f"INSERT INTO {schema}.timeline (incident_id, at, kind, actor, message, data) "
        "VALUES (%s, %s, %s, %s, %s, %s) RETURNING seq",
        (incident_id, at, kind, actor, message, json.dumps(data, default=str)),
    )
    row = cursor.fetchone()
    assert row is not None
    return int(row["seq"])


def keep_span_records(
    cursor: Cursor,
    schema: str,
    outcomes: list[GroupOutcome],
    groups: dict[str, Group],
    now: float,
    limit: int,
    per_group: int,
) -> None:
    """Store the batch's sampled failures (see ``span_record_rows``), keeping the newest
    ``limit`` rows across every replica."""
    cursor.executemany(
        f"INSERT INTO {schema}.span_records (at, incident_id, classification, record, weight) "
        "VALUES (%s, %s, %s, %s, %s)",
        span_record_rows(outcomes, groups, now, limit, per_group),
    )
    cursor.execute(
        f"DELETE FROM {schema}.span_records "
        f"WHERE seq <= (SELECT MAX(seq) FROM {schema}.span_records) - %s",
        (limit,),
    )


def read_span_records(
    cursor: Cursor, schema: str, limit: int | None, incident_id: str | None
) -> list[StoredSpanRecord]:
    where, params = ("WHERE incident_id = %s", [incident_id]) if incident_id else ("", [])
    cursor.execute(
        f"SELECT classification, record, weight FROM {schema}.span_records {where} "
        "ORDER BY seq DESC LIMIT %s",
        [*params, limit],
    )
    found = [
        stored_span_record(row["classification"], row["record"], row["weight"])
        for row in cursor.fetchall()
    ]
    found.reverse()
    return found
