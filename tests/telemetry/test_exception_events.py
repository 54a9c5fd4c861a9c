from __future__ import annotations

import traceback

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from telemetry.exception_events import record_exception, stacktrace


class Boom(RuntimeError):
    pass


def fail(message: str) -> None:
    raise Boom(message)


def caught(message: str) -> Boom:
    try:
        fail(message)
    except Boom as exc:
        return exc
    raise AssertionError("unreachable")


def test_the_event_matches_what_the_sdk_records() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    exc = caught("disk on fire")
    with provider.get_tracer("t").start_as_current_span("ours") as span:
        record_exception(span, exc, {"ers.attempt": 2})
    with provider.get_tracer("t").start_as_current_span("sdk") as span:
        span.record_exception(exc)
    ours, sdk = (s.events[0].attributes for s in exporter.get_finished_spans())
    for key in ("exception.type", "exception.message", "exception.escaped"):
        assert ours[key] == sdk[key]
    assert ours["ers.attempt"] == 2
    assert ours["exception.stacktrace"].rstrip().endswith("Boom: disk on fire")
    assert "in fail" in ours["exception.stacktrace"]


def test_reused_frames_still_carry_the_current_message() -> None:
    first = stacktrace(caught("first message"))
    second = stacktrace(caught("second message"))
    assert first.rstrip().endswith("first message")
    assert second.rstrip().endswith("second message")
    assert first.replace("first", "X") == second.replace("second", "X")


def test_chained_exceptions_keep_their_context() -> None:
    try:
        try:
            fail("inner")
        except Boom as inner:
            raise ValueError("outer") from inner
    except ValueError as exc:
        text = stacktrace(exc)
        expected = "".join(traceback.format_exception(exc))
    assert "inner" in text and "outer" in text
    assert text == expected


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_the_last_line_is_what_the_traceback_module_writes() -> None:
    noted = ValueError("with a note")
    noted.add_note("the note")
    for exc in (
        Boom("disk on fire"),
        Boom(),
        Boom("two\nlines"),
        KeyError("key"),
        FileNotFoundError(2, "No such file", "x.db"),
        SyntaxError("bad", ("f.py", 1, 2, "x y", 1, 3)),
        ExceptionGroup("many", [Boom("one")]),
        _Unprintable(),
        noted,
    ):
        assert stacktrace(exc).endswith("".join(traceback.format_exception_only(exc))), exc


def test_an_exception_whose_message_cannot_be_read_is_recorded() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        raise _Unprintable()
    except _Unprintable as exc:
        with provider.get_tracer("t").start_as_current_span("ours") as span:
            record_exception(span, exc, {})
    (event,) = exporter.get_finished_spans()[0].events
    attributes = event.attributes or {}
    assert attributes["exception.type"].endswith("_Unprintable")
    assert attributes["exception.message"] == "<exception str() failed>"
    assert str(attributes["exception.stacktrace"]).endswith(
        "_Unprintable: <exception str() failed>\n"
    )
