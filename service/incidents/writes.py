"""Writing a batch of classified failures into the incidents tables: one row read and one
row write per fingerprint per batch, which is what lets an error storm be recorded at full
speed, and safely while other replicas write the same fingerprints.

Each fingerprint's row is locked (on PostgreSQL ``SELECT … FOR NO KEY UPDATE``, the lock of
an update that leaves the key alone; on SQLite the write transaction holds the file) until
the batch commits, so two writers merging into one incident take turns and no count is lost.
A new fingerprint is inserted with ``ON CONFLICT (fingerprint) DO NOTHING``: when another
replica opened it a moment earlier, its row is locked and merged into instead, so the same
failure from two replicas is one incident. Fingerprints are locked in sorted order, one
order for every writer, so two batches never wait on each other in a circle. What a batch
does to an incident is decided in ``incident_merge``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from service.incidents.merge import (
    MERGED_COLUMNS,
    Group,
    GroupOutcome,
    StoredSpanRecord,
    group_by_fingerprint,
    merge_group,
    span_record_rows,
    stored_span_record,
)
from service.incidents.model import OPENED, Incident
from service.stores.sql import Database, Dialect, Statements
from telemetry.sink import Sent
from telemetry.span_record import SpanRecord

UPDATE_SQL = (
    f"UPDATE incidents SET {', '.join(f'{name} = ?' for name in MERGED_COLUMNS)} WHERE id = ?"
)
# Requests of spans other services sent are remembered this long (``sent_key``), and one
# sent again within it is not counted again: three times the 5 minutes an OpenTelemetry
# exporter (the collector's otlphttp among them) goes on resending a batch it got no answer
# for.
SENT_BATCHES_KEPT_S = 900.0
# Rows of one INSERT: 2 parameters each, well under either engine's limit.
_SENT_ROWS = 300


def write_groups(
    db: Statements,
    dialect: Dialect,
    groups: dict[str, Group],
    now: float,
    max_trace_ids: int,
    new_id: Callable[[float], str],
) -> list[GroupOutcome]:
    """Run inside a transaction; outcomes in the order of ``groups``."""
    by_fingerprint: dict[str, GroupOutcome] = {}
    for fingerprint in sorted(groups):
        group = groups[fingerprint]
        current = _locked(db, dialect, fingerprint)
        incident, outcome, notes = merge_group(current, group, now, max_trace_ids, new_id)
        if outcome == OPENED and not _insert(db, incident):
            # Another replica opened it since we looked: merge into theirs.
            current = _locked(db, dialect, fingerprint)
            incident, outcome, notes = merge_group(current, group, now, max_trace_ids, new_id)
        if outcome != OPENED:
            db.execute(UPDATE_SQL, (*_values(incident, MERGED_COLUMNS), incident.id))
        for kind, text in notes:
            insert_timeline(db, incident.id, now, kind, "classifier", text)
        record, classification = group[-1]
        by_fingerprint[fingerprint] = GroupOutcome(incident, outcome, classification, record)
    return [by_fingerprint[fingerprint] for fingerprint in groups]


def first_sent(db: Statements, sent: Sent, now: float) -> list[tuple[SpanRecord, Any]]:
    """The spans of the requests in ``sent`` not written before, by this process or another
    replica, before a restart or a ``kill -9`` that took the answer: a request's key is
    remembered in the same transaction as its spans' occurrences, so they count once
    however often their sender sends them (also one whose spans all enclosed failures
    counted before, so that none of them counts after a restart either). A request without
    a key counts each time. Keys are inserted in sorted order, as fingerprints are locked:
    each waits on a replica inserting the same one, so two batches of the same requests in
    other orders (a resend to another replica) must not wait on each other in a circle."""
    keys = sorted({key for key, _ in sent if key is not None})
    new: set[int] = set()
    for start in range(0, len(keys), _SENT_ROWS):
        chunk = keys[start : start + _SENT_ROWS]
        rows = db.execute(
            "INSERT INTO sent_batches (id, at) VALUES "
            + ", ".join(["(?, ?)"] * len(chunk))
            + " ON CONFLICT (id) DO NOTHING RETURNING id",
            [value for key in chunk for value in (key, now)],
        ).fetchall()
        new.update(row["id"] for row in rows)
    kept: list[tuple[SpanRecord, Any]] = []
    for key, items in sent:
        if key is None:
            kept.extend(items)
        elif key in new:
            new.discard(key)  # the first of a batch that holds it twice
            kept.extend(items)
    return kept


def forget_sent(db: Statements, now: float) -> None:
    """Forget the requests sent more than ``SENT_BATCHES_KEPT_S`` ago (the store does it at
    most once a minute: on SQLite it reads the whole table, whose only index is the key, as
    an index on the time would cost each insert more than these reads)."""
    db.execute("DELETE FROM sent_batches WHERE at < ?", (now - SENT_BATCHES_KEPT_S,))


def _locked(db: Statements, dialect: Dialect, fingerprint: str) -> Incident | None:
    row = db.execute(
        f"SELECT * FROM incidents WHERE fingerprint = ?{dialect.lock_rows}", (fingerprint,)
    ).fetchone()
    return None if row is None else Incident.from_row(row)


def _insert(db: Statements, incident: Incident) -> bool:
    """False when the fingerprint exists already (another replica inserted it)."""
    columns = tuple(vars(incident))
    return (
        db.execute(
            f"INSERT INTO incidents ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            " ON CONFLICT (fingerprint) DO NOTHING RETURNING id",
            _values(incident, columns),
        ).fetchone()
        is not None
    )


def _values(incident: Incident, columns: Sequence[str]) -> list[Any]:
    return [
        json.dumps(incident.trace_ids) if name == "trace_ids" else getattr(incident, name)
        for name in columns
    ]


def insert_timeline(
    db: Statements, incident_id: str, at: float, kind: str, actor: str, message: str
) -> None:
    """A timeline note with no data; notes with data go through ``add_timeline``."""
    db.execute(
        "INSERT INTO timeline (incident_id, at, kind, actor, message, data) "
        "VALUES (?, ?, ?, ?, ?, '{}')",
        (incident_id, at, kind, actor, message),
    )


def keep_span_records(
    db: Statements,
    outcomes: list[GroupOutcome],
    groups: dict[str, Group],
    now: float,
    limit: int,
    per_group: int,
) -> None:
    """Store the batch's sampled failures (see ``span_record_rows``), keeping the newest
    ``limit`` rows across every replica."""
    db.executemany(
        "INSERT INTO span_records (at, incident_id, classification, record, weight) "
        "VALUES (?, ?, ?, ?, ?)",
        span_record_rows(outcomes, groups, now, limit, per_group),
    )
    db.execute(
        "DELETE FROM span_records WHERE seq <= (SELECT MAX(seq) FROM span_records) - ?", (limit,)
    )


def read_span_records(
    database: Database, limit: int | None, incident_id: str | None
) -> list[StoredSpanRecord]:
    """The newest ``limit`` kept records (of ``incident_id``), oldest first."""
    where, params = ("WHERE incident_id = ?", [incident_id]) if incident_id else ("", [])
    rows = database.rows(
        f"SELECT classification, record, weight FROM span_records {where} "
        "ORDER BY seq DESC LIMIT ?",
        [*params, database.dialect.no_limit if limit is None else limit],
    )
    found = [
        stored_span_record(row["classification"], row["record"], row["weight"]) for row in rows
    ]
    found.reverse()
    return found


__all__ = [
    "GroupOutcome",
    "StoredSpanRecord",
    "first_sent",
    "forget_sent",
    "group_by_fingerprint",
    "insert_timeline",
    "keep_span_records",
    "read_span_records",
    "write_groups",
]
