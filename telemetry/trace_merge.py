"""How a trace's new spans join the spans the archive already holds of it.

The merge runs inside the write's transaction, after the table has locked the trace's row
(``merged_with_stored``): two replicas, or a replica's writer and its stop, adding spans to
one trace at once each add to what the other wrote, instead of reading the row first and
writing back a copy without the other's spans. It is written once for both tables; the one
thing that differs, how a SELECT locks its rows, is the table's to say.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Protocol


class Statements(Protocol):
    """A connection or cursor inside the write's transaction, taking ``?`` placeholders; rows
    are read by column name."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Iterable[Any]: ...


def encoded(spans: Sequence[dict[str, Any]]) -> str:
    """``spans`` (``SpanRecord.to_dict``) as the JSON a row holds."""
    return json.dumps(spans, default=str)


def merged(new: str, stored: str | None) -> str:
    """The row's spans once ``new`` (JSON) joins ``stored`` (what the row held, None when
    there was no row): a span in both is the new one."""
    if stored is None:
        return new
    try:
        held = json.loads(stored)
    except ValueError:  # unreadable: the write replaces it
        return new
    if not isinstance(held, list):
        return new
    arriving = json.loads(new)
    replaced = {span["spanId"] for span in arriving}
    kept = [span for span in held if isinstance(span, dict) and span.get("spanId") not in replaced]
    return encoded([*kept, *arriving])


def merged_with_stored(
    db: Statements, rows: Sequence[tuple[str, float, str]], lock_rows: str
) -> list[tuple[str, float, str]]:
    """``rows`` (trace id, kept_at, new spans), each merged with the spans the table holds
    of its trace, read in ``db``'s transaction with ``lock_rows`` (" FOR NO KEY UPDATE" on
    PostgreSQL; nothing on SQLite, whose write transaction holds the whole file), so the
    rows stay locked until the write commits."""
    if not rows:
        return []
    ids = sorted({trace_id for trace_id, _, _ in rows})
    marks = ",".join("?" * len(ids))
    stored: dict[str, str | None] = {
        str(row["trace_id"]): str(row["spans"])
        for row in db.execute(
            f"SELECT trace_id, spans FROM traces WHERE trace_id IN ({marks}){lock_rows}", ids
        )
    }
    out = []
    for trace_id, kept_at, spans in rows:
        # A trace twice in one batch: the second joins the first.
        stored[trace_id] = merged(spans, stored.get(trace_id))
        out.append((trace_id, kept_at, stored[trace_id]))
    return out
