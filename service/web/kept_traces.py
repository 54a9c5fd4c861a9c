"""The traces endpoint's and the OTLP intake's view of the trace keeper."""

from __future__ import annotations

from telemetry.trace_keeper import TraceKeeper, span_tree


class KeptTraces:
    """The traces endpoint's view of the trace keeper, a span tree or None, and the keeper
    the OTLP intake hands other services' spans to. Both may read or write the keeper's
    archive (its file, or the fleet's table on PostgreSQL): call them off the event loop.
    A trace not held here whose archive cannot be read raises ``StoreUnavailable``; one held
    here answers without the archive's spans when the archive does not answer promptly."""

    def __init__(self, keeper: TraceKeeper) -> None:
        self.keeper = keeper

    def tree(self, trace_id: str) -> tuple[dict[str, object] | None, str]:
        """The trace's span tree, or None; and why the archive's spans of a trace held here
        are not in it, when they are not (else "")."""
        found = self.keeper.read_trace(trace_id)
        if found is None:
            return None, ""
        records, archive_unread = found
        tree = {
            "traceId": trace_id,
            "spanCount": len(records),
            "errorSpans": sum(r.is_error for r in records),
            "spans": span_tree(records),
        }
        return tree, archive_unread
