"""Which error spans of another service count: the innermost failure of a trace and service
counts, the spans around it do not; siblings that ran at once count each; nothing is
remembered before it is written."""

from __future__ import annotations

from typing import Any

import pytest

from telemetry import enclosing as enclosing_module
from telemetry.enclosing import MAX_SPANS_PER_TRACE, EnclosingFailures
from telemetry.span_record import SpanRecord
from tests.telemetry.conftest import error_record

# Times are nanoseconds since the epoch; tests give them from here.
T0 = 1_700_000_000_000_000_000
HANDLER = "00000000000000aa"  # a parent that was not sent (the collector forwards errors only)


def span(start: int, end: int, **where: Any) -> SpanRecord:
    """A failing span ``start`` to ``end`` nanoseconds after T0 (see ``sent_at``)."""
    return sent_at(T0 + start, T0 + end, **where)


def sent_at(
    start: int,
    end: int,
    trace: str = "a" * 32,
    service: str = "shop",
    parent: SpanRecord | str | None = HANDLER,
) -> SpanRecord:
    record = error_record(trace_id=trace, resource={"service.name": service})
    record.start_ns, record.end_ns = start, end
    record.parent_span_id = parent.span_id if isinstance(parent, SpanRecord) else parent
    return record


def test_spans_around_a_failure_are_not_counted_whatever_order_they_come_in() -> None:
    server = span(0, 100, parent=None)
    handler = span(10, 90, parent=server)
    call = span(20, 30, parent=handler)
    assert EnclosingFailures().counted([server, handler, call]) == [call]


def test_failures_side_by_side_other_traces_and_other_services_count() -> None:
    first, second = span(10, 20), span(30, 40)
    elsewhere = span(0, 100, trace="b" * 32, parent=None)
    other_service = span(0, 100, service="payments", parent=None)
    counted = EnclosingFailures().counted([first, second, elsewhere, other_service])
    assert len(counted) == 4


def test_two_calls_of_one_parent_that_ran_at_once_are_two_failures() -> None:
    longer, shorter = span(10, 90), span(20, 30)  # gathered: the longer around the shorter
    assert EnclosingFailures().counted([longer, shorter]) == [longer, shorter]


def test_a_batch_not_written_is_not_remembered_and_counts_when_sent_again() -> None:
    enclosing = EnclosingFailures()
    call, server = span(20, 30), span(0, 100, parent=None)
    assert enclosing.counted([call]) == [call]  # the store failed: nothing remembered
    assert enclosing.counted([call]) == [call]
    enclosing.remember([call])
    assert enclosing.counted([server]) == []  # a later batch, around the written failure
    assert enclosing.counted([call]) == []  # the same span sent again: counted once


def test_memory_is_bounded_oldest_trace_first() -> None:
    enclosing = EnclosingFailures(max_traces=2)
    traces = [f"{n:032x}" for n in range(3)]
    enclosing.remember([span(20, 30, trace=t) for t in traces])
    around = [span(0, 100, trace=t, parent=None) for t in traces]
    assert enclosing.counted(around) == around[:1]  # the first trace was forgotten


def test_spans_without_times_are_each_counted() -> None:
    """Some senders send 0 for both times: each span would enclose every other."""
    enclosing = EnclosingFailures()
    first, second, broken = sent_at(0, 0), sent_at(0, 0), span(50, 40)
    assert enclosing.counted([first, second, broken]) == [first, second, broken]
    enclosing.remember([first, second, broken])
    later, no_start = sent_at(0, 0, parent=None), sent_at(0, T0, parent=None)
    assert enclosing.counted([later, no_start]) == [later, no_start]


def test_a_span_without_times_sent_again_counts_once() -> None:
    """A sender that sends 0 for the times sends its spans again after a 200 whose reply
    was lost: each was counted again, the same span id or not."""
    enclosing = EnclosingFailures()
    untimed = sent_at(0, 0)
    assert enclosing.counted([untimed]) == [untimed]
    enclosing.remember([untimed])
    assert enclosing.counted([untimed]) == []
    # Still nothing encloses it, nor does it enclose anything: other spans count.
    other, around = sent_at(0, 0), span(0, 100, parent=None)
    assert enclosing.counted([other, around]) == [other, around]


def test_a_span_is_judged_against_a_bounded_number_of_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One request of many spans of one trace costs linear work, not quadratic."""
    judged = 0
    encloses = enclosing_module._encloses

    def counting(outer: tuple[int, ...], inner: tuple[int, ...]) -> bool:
        nonlocal judged
        judged += 1
        return encloses(outer, inner)  # type: ignore[arg-type]

    monkeypatch.setattr(enclosing_module, "_encloses", counting)
    records = [span(1_000 + 10 * n, 1_005 + 10 * n) for n in range(5_000)]
    assert len(EnclosingFailures().counted(records)) == len(records)
    assert judged <= len(records) * MAX_SPANS_PER_TRACE
