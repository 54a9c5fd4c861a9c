"""Which error spans of another service count: the innermost failure of a trace and service
counts, the spans around it do not; nothing is remembered before it is written."""

from __future__ import annotations

from telemetry.enclosing import EnclosingFailures
from telemetry.span_record import SpanRecord
from tests.telemetry.conftest import error_record


def span(start: int, end: int, trace: str = "a" * 32, service: str = "shop") -> SpanRecord:
    record = error_record(trace_id=trace, resource={"service.name": service})
    record.start_ns, record.end_ns = start, end
    return record


def test_spans_around_a_failure_are_not_counted_whatever_order_they_come_in() -> None:
    server, handler, call = span(0, 100), span(10, 90), span(20, 30)
    assert EnclosingFailures().counted([server, handler, call]) == [call]


def test_failures_side_by_side_other_traces_and_other_services_count() -> None:
    first, second = span(10, 20), span(30, 40)
    elsewhere = span(0, 100, trace="b" * 32)
    other_service = span(0, 100, service="payments")
    counted = EnclosingFailures().counted([first, second, elsewhere, other_service])
    assert len(counted) == 4


def test_a_batch_not_written_is_not_remembered_and_counts_when_sent_again() -> None:
    enclosing = EnclosingFailures()
    call, server = span(20, 30), span(0, 100)
    assert enclosing.counted([call]) == [call]  # the store failed: nothing remembered
    assert enclosing.counted([call]) == [call]
    enclosing.remember([call])
    assert enclosing.counted([server]) == []  # a later batch, around the written failure
    assert enclosing.counted([call]) == []  # the same span sent again: counted once


def test_memory_is_bounded_oldest_trace_first() -> None:
    enclosing = EnclosingFailures(max_traces=2)
    traces = [f"{n:032x}" for n in range(3)]
    enclosing.remember([span(20, 30, trace=t) for t in traces])
    around = [span(0, 100, trace=t) for t in traces]
    assert enclosing.counted(around) == around[:1]  # the first trace was forgotten
