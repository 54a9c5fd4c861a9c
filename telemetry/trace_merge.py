"""How a trace's new spans join the spans the archive already holds of it, and how much of one
trace the archive keeps.

The merge runs inside the write's transaction, after the table has locked the trace's row
(``merged_with_stored``): two replicas, or a replica's writer and its stop, adding spans to
one trace at once each add to what the other wrote, instead of reading the row first and
writing back a copy without the other's spans. It is written once for both tables; the one
thing that differs, how a SELECT locks its rows, is the table's to say.

Bounded (``TraceBound``): a trace's row grows as its spans arrive, after restarts and at
every replica, where a process's memory holds at most its keeper's span budget; a sender
holding the intake token could otherwise keep enlarging one trace. A row holds at most
``MAX_TRACE_SPANS`` spans and ``MAX_TRACE_BYTES`` of JSON. What it keeps first is what an
incident needs: the error spans and their ancestors, then the others, in both cases the
spans it already held before the ones arriving (a later flood cannot push out what an
incident named). The keeper bounds a trace it holds in memory the same way (``fitting``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# The trace keeper's span budget: the most spans one process holds of all its kept traces.
MAX_TRACE_SPANS = 20_000
# As much as one request to the OTLP intake may bring (``otlp_intake.MAX_DECODED_BYTES``).
MAX_TRACE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TraceBound:
    """The most one trace's archived row holds."""

    spans: int = MAX_TRACE_SPANS
    bytes: int = MAX_TRACE_BYTES


class Statements(Protocol):
    """A connection or cursor inside the write's transaction, taking ``?`` placeholders; rows
    are read by column name."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Iterable[Any]: ...


def encoded(spans: Sequence[dict[str, Any]], bound: TraceBound) -> str:
    """``spans`` (``SpanRecord.to_dict``) as the JSON a row holds, within ``bound``."""
    parts = [json.dumps(span, default=str) for span in spans]
    return _joined(_within(spans, parts, bound))


def merged(new: str, stored: str | None, bound: TraceBound) -> str:
    """The row's spans once ``new`` (JSON, already within ``bound``) joins ``stored`` (what
    the row held, None when there was no row): a span in both is the new one."""
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
    return encoded([*kept, *arriving], bound)


def merged_with_stored(
    db: Statements, rows: Sequence[tuple[str, float, str]], bound: TraceBound, lock_rows: str
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
        stored[trace_id] = merged(spans, stored.get(trace_id), bound)
        out.append((trace_id, kept_at, stored[trace_id]))
    return out


def _within(spans: Sequence[dict[str, Any]], parts: list[str], bound: TraceBound) -> list[str]:
    """The parts (each span's JSON) that fit in ``bound``, in their order (``fitting``)."""
    if len(parts) <= bound.spans and sum(len(p) + 2 for p in parts) <= bound.bytes:
        return parts
    shapes = [(span.get("spanId"), span.get("parentSpanId"), _failed(span)) for span in spans]
    # Each part with its separator, within the room the brackets leave.
    sizes = [len(part) + 2 for part in parts]
    return [parts[index] for index in fitting(shapes, sizes, bound, room=bound.bytes - 2)]


def fitting(
    spans: Sequence[tuple[object, object, bool]], sizes: Sequence[int], bound: TraceBound, room: int
) -> list[int]:
    """The indexes, in order, of the ``spans`` (each its span id, its parent's span id and
    whether it failed) that fit in ``bound``'s count and in ``room`` bytes, span ``i`` taking
    ``sizes[i]``: first the error spans and their ancestors, then the others, each group in
    the order given (the spans held before the arriving ones come first). The archive's row
    and the keeper's trace in memory are bounded alike."""
    needed = _errors_and_ancestors(spans)
    chosen: set[int] = set()
    used = 0
    for wanted in (True, False):
        for index, size in enumerate(sizes):
            if len(chosen) >= bound.spans:
                break
            if (index in needed) is wanted and used + size <= room:
                chosen.add(index)
                used += size
    return sorted(chosen)


def _failed(span: dict[str, Any]) -> bool:
    status = span.get("status")
    return isinstance(status, dict) and status.get("code") == "ERROR"


def _errors_and_ancestors(spans: Sequence[tuple[object, object, bool]]) -> set[int]:
    """The indexes of the error spans and of every span above one of them."""
    index_of = {span_id: index for index, (span_id, _, _) in enumerate(spans)}
    needed: set[int] = set()
    for index, (_, _, failed) in enumerate(spans):
        if not failed:
            continue
        while index not in needed:
            needed.add(index)
            parent = index_of.get(spans[index][1])
            if parent is None:
                break
            index = parent
    return needed


def _joined(parts: list[str]) -> str:
    return "[" + ", ".join(parts) + "]"
