from __future__ import annotations

import json

from opentelemetry.trace import Status, StatusCode

from telemetry.span_record import EXCEPTION_BASES_ATTRIBUTE, STACKTRACE_LIMIT, SpanRecord
from tests.telemetry.conftest import Tracing, fail_span


class StoreDown(ConnectionError):
    pass


def test_a_record_of_an_sdk_span_carries_what_classification_needs(tracing: Tracing) -> None:
    tracer = tracing.tracer
    with (
        tracer.start_as_current_span("POST /chat") as root,
        tracer.start_as_current_span("agent.bma", attributes={"ers.agent": "BMA"}) as span,
    ):
        fail_span(span, StoreDown("budgets store unreachable"))
    child = SpanRecord.from_readable_span(tracing.finished()[0])
    assert child.name == "agent.bma"
    assert child.trace_id == format(root.get_span_context().trace_id, "032x")
    assert child.parent_span_id == format(root.get_span_context().span_id, "016x")
    assert child.is_error and child.status_message == "StoreDown: budgets store unreachable"
    assert child.exception_type.endswith("StoreDown")
    assert child.exception_message == "budgets store unreachable"
    assert child.exception_bases == ("ConnectionError", "OSError", "Exception")
    assert child.attributes[EXCEPTION_BASES_ATTRIBUTE] == [
        "ConnectionError",
        "OSError",
        "Exception",
    ]
    assert child.service_name == "ers" and child.resource["service.name"] == "ers"
    assert child.kind == "INTERNAL" and child.end_ns >= child.start_ns
    assert child.events[0].name == "exception"


def test_records_survive_a_json_round_trip(tracing: Tracing) -> None:
    with tracing.tracer.start_as_current_span("agent.npa", attributes={"tags": ("a", "b")}) as span:
        fail_span(span, RuntimeError("boom"))
    record = SpanRecord.from_readable_span(tracing.finished()[0])
    assert SpanRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_without_an_exception_event_the_error_type_and_status_message_are_used() -> None:
    record = SpanRecord.from_dict(
        {
            "name": "agent.npa",
            "status": {"code": "ERROR", "message": "TimeoutError: Agent call timed out"},
            "attributes": {"error.type": "TimeoutError"},
        }
    )
    assert (record.exception_type, record.exception_message) == (
        "TimeoutError",
        "Agent call timed out",
    )
    bare = SpanRecord.from_dict({"name": "x", "status": {"code": "ERROR", "message": "gone"}})
    assert (bare.exception_type, bare.exception_message) == ("", "gone")


def test_long_stack_traces_are_capped(tracing: Tracing) -> None:
    with tracing.tracer.start_as_current_span("deep") as span:
        span.add_event("exception", {"exception.type": "E", "exception.stacktrace": "x" * 10_000})
        span.set_status(Status(StatusCode.ERROR))
    record = SpanRecord.from_readable_span(tracing.finished()[0])
    assert len(record.events[0].attributes["exception.stacktrace"]) == STACKTRACE_LIMIT


def test_a_hand_written_record_needs_only_a_name() -> None:
    record = SpanRecord.from_dict({"name": "agent.npa"})
    assert record.is_error and record.service_name == "unknown_service"
