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
counted both, and so are two calls of one parent that ran at once (siblings, the longer
around the shorter). A span sent again (the same span id) counts once; a span without its
times is judged by its id alone (it encloses nothing and nothing encloses it). ERS's own
spans are not judged here: its guard reports each failure once.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Sequence

from telemetry.span_record import SpanRecord

# Traces remembered (least recently seen forgotten first) and failing spans per trace and
# service, each four numbers: one span in a tuple, more in an array of 64-bit numbers (the
# garbage collector tracks neither): at most about 10 MiB. A span is judged against at
# most MAX_SPANS_PER_TRACE others, so one request of thousands of spans costs no quadratic
# time.
MAX_TRACES = 8192
MAX_SPANS_PER_TRACE = 32
_TIMES_END = 1 << 63  # OTLP times are unsigned 64-bit; these are kept signed (to 2262)
_FIELDS = 4  # start, end, span id, parent span id (0 for none)
# The times a span without usable ones is remembered with: no timed span starts before it.
_UNTIMED = -1


def _timed(record: SpanRecord) -> bool:
    """Whether ``record``'s times can tell nesting: some senders send 0 for both (then
    every span would enclose every other), and a span that ends before it starts is broken."""
    return 0 < record.start_ns <= record.end_ns < _TIMES_END


def _span(record: SpanRecord) -> tuple[int, int, int, int]:
    """Its times and its and its parent's ids, as hashes: a third of the cost of parsing the
    hex, and only told apart within this process, where they are kept. Without usable
    times, times no timed span can enclose."""
    parent = record.parent_span_id
    start, end = (record.start_ns, record.end_ns) if _timed(record) else (_UNTIMED, _UNTIMED)
    return (start, end, hash(record.span_id), hash(parent) if parent else 0)


def _encloses(outer: tuple[int, int, int, int], inner: tuple[int, int, int, int]) -> bool:
    """``outer`` is the failure ``inner`` reported again: the same span sent again, or a
    span around it in time that is not its sibling (two calls of one parent that ran at
    once, one longer, are two failures)."""
    if outer[2] == inner[2]:
        return True
    return outer[0] <= inner[0] and inner[1] <= outer[1] and outer[3] != inner[3]


class EnclosingFailures:
    """Tells which error spans enclose an earlier one; used from one thread (the worker).
    Spans are remembered once written (``remember``): a batch the store could not write is
    sent again, and must then count."""

    def __init__(self, max_traces: int = MAX_TRACES) -> None:
        self._max_traces = max_traces
        # (trace, service) -> (start, end, span id, parent, start, ...), flat, so thousands
        # of them cost the garbage collector's passes nothing.
        self._seen: OrderedDict[tuple[str, str], tuple[int, ...] | array[int]] = OrderedDict()

    def counted(self, records: Sequence[SpanRecord]) -> list[SpanRecord]:
        """``records``, in their order, less those that enclose a failing span counted
        before (in this call or a written batch); within a call spans are judged innermost
        first, since a span ends before the spans around it. A span sent again (the same
        span id) is not counted twice."""
        seen = self._seen
        keys = [(record.trace_id, record.service_name) for record in records]
        if len(set(keys)) == len(keys) and seen.keys().isdisjoint(keys):
            return list(records)  # the usual case: each span alone in its trace and service
        by_key: dict[tuple[str, str], list[SpanRecord]] = {}
        joined: set[int] = set()
        for key, record in zip(keys, records, strict=True):
            if _timed(record):
                by_key.setdefault(key, []).append(record)
            elif _sent_before(seen.get(key), hash(record.span_id)):
                joined.add(id(record))
        for key, group in by_key.items():
            earlier = seen.get(key)
            if earlier is None and len(group) == 1:  # the usual case: nothing to judge
                continue
            earlier = earlier or ()
            spans = [earlier[i : i + _FIELDS] for i in range(0, len(earlier), _FIELDS)]
            for record in sorted(group, key=lambda r: (r.end_ns, -r.start_ns)):
                this = _span(record)
                if any(_encloses(this, inner) for inner in spans):
                    joined.add(id(record))
                elif len(spans) < MAX_SPANS_PER_TRACE:
                    spans.append(this)
        if not joined:
            return list(records)
        return [record for record in records if id(record) not in joined]

    def remember(self, records: Sequence[SpanRecord]) -> None:
        """``records`` (as ``counted`` returned them) are written."""
        seen = self._seen
        for record in records:
            key = (record.trace_id, record.service_name)
            spans = seen.get(key)
            if spans is None:
                seen[key] = _span(record)
                if len(seen) > self._max_traces:
                    seen.popitem(last=False)
                continue
            seen.move_to_end(key)
            if len(spans) < _FIELDS * MAX_SPANS_PER_TRACE:
                if isinstance(spans, tuple):  # a second span: 8 bytes a number from now on
                    seen[key] = spans = array("q", spans)
                spans.extend(_span(record))


def _sent_before(spans: tuple[int, ...] | array[int] | None, span_id: int) -> bool:
    """A span with this id is among ``spans`` (as remembered), i.e. it is sent again."""
    return spans is not None and any(spans[i + 2] == span_id for i in range(0, len(spans), _FIELDS))
