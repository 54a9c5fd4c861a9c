"""The traces endpoint's and the OTLP intake's view of the trace keeper."""

from __future__ import annotations

from telemetry.trace_keeper import TraceKeeper, span_tree


class KeptTraces:
    """The traces endpoint's view of the trace keeper, a span tree or None, and the keeper
    the OTLP intake hands other services' spans to. Both may read or write the keeper's
    archive (its file, or the fleet's table on PostgreSQL): call them off the event loop.
    A trace not held here whose archive cannot be read raises ``StoreUnavailable``."""

    def __init__(self, keeper: TraceKeeper) -> None:
        self.keeper = keeper

    def tree(self, trace_id: str) -> dict[str, object] | None:
        records = self.keeper.get_trace(trace_id)
        if records is None:
            return None
        return {
            "traceId": trace_id,
            "spanCount": len(records),
            "errorSpans": sum(r.is_error for r in records),
            "spans": span_tree(records),
        }
