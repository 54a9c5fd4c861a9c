"""One failure of another service is one occurrence, however many of its spans report it.

An instrumented service reports one failure on several spans: the database call that
failed, and around it the handler and the HTTP server span (ERROR for its 500, often with
the same exception recorded again as it escaped). Each would be an occurrence, and the
server span's ``500`` an incident of its own beside the database's. A span of another
service that fails around an earlier failing span of the same trace and service (it started
no later and ended no sooner) is taken as the same failure: it stays in the kept trace, and
is not counted again. Spans end before the spans around them, so the innermost failure,
nearest the cause, is the one counted.

The collector forwards only error spans, so the spans between two failing ones are missing
and parent links cannot tell nesting; time can, within one service's clock. Two failures
side by side in one request (two calls that each failed) do not enclose one another and are
counted both. ERS's own spans are not judged here: its guard reports each failure once.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Sequence

from telemetry.span_record import SpanRecord

# Traces remembered (least recently seen forgotten first) and failing spans per trace and
# service, each 16 bytes: at most about 10 MiB. A span is judged against at most
# MAX_SPANS_PER_TRACE others, so one request of thousands of spans costs no quadratic time.
MAX_TRACES = 8192
MAX_SPANS_PER_TRACE = 64
_TIMES_END = 1 << 64  # OTLP times are unsigned 64-bit, and so are those remembered


def _timed(record: SpanRecord) -> bool:
    """Whether ``record``'s times can tell nesting: some senders send 0 for both (then
    every span would enclose every other), and a span that ends before it starts is broken."""
    return 0 < record.start_ns <= record.end_ns < _TIMES_END


class EnclosingFailures:
    """Tells which error spans enclose an earlier one; used from one thread (the worker).
    Spans are remembered once written (``remember``): a batch the store could not write is
    sent again, and must then count."""

    def __init__(self, max_traces: int = MAX_TRACES) -> None:
        self._max_traces = max_traces
        # (trace, service) -> [start, end, start, end, ...]: a flat array of unsigned 64-bit
        # times (OTLP's), which the garbage collector does not track, so thousands of them
        # cost its passes nothing.
        self._seen: OrderedDict[tuple[str, str], array[int]] = OrderedDict()

    def counted(self, records: Sequence[SpanRecord]) -> list[SpanRecord]:
        """``records``, in their order, less those that enclose a failing span counted
        before (in this call or a written batch); within a call spans are judged innermost
        first, since a span ends before the spans around it. A span sent again (the same
        times) encloses itself, so it is not counted twice."""
        by_key: dict[tuple[str, str], list[SpanRecord]] = {}
        for record in records:
            if _timed(record):
                by_key.setdefault((record.trace_id, record.service_name), []).append(record)
        seen = self._seen
        joined: set[int] = set()
        for key, group in by_key.items():
            earlier = seen.get(key)
            if earlier is None and len(group) == 1:  # the usual case: nothing to judge
                continue
            intervals = list(zip(earlier[::2], earlier[1::2], strict=True)) if earlier else []
            for record in sorted(group, key=lambda r: (r.end_ns, -r.start_ns)):
                start, end = record.start_ns, record.end_ns
                if any(
                    start <= inner_start and inner_end <= end
                    for inner_start, inner_end in intervals
                ):
                    joined.add(id(record))
                elif len(intervals) < MAX_SPANS_PER_TRACE:
                    intervals.append((start, end))
        if not joined:
            return list(records)
        return [record for record in records if id(record) not in joined]

    def remember(self, records: Sequence[SpanRecord]) -> None:
        """``records`` (as ``counted`` returned them) are written."""
        seen = self._seen
        for record in records:
            if not _timed(record):
                continue
            key = (record.trace_id, record.service_name)
            spans = seen.get(key)
            if spans is None:
                seen[key] = array("Q", (record.start_ns, record.end_ns))
                if len(seen) > self._max_traces:
                    seen.popitem(last=False)
                continue
            seen.move_to_end(key)
            if len(spans) < 2 * MAX_SPANS_PER_TRACE:
                spans.extend((record.start_ns, record.end_ns))
