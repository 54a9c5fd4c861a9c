"""Throughput of the incident pipeline and the cost it adds to ending a span.

Pipeline: error spans shaped like the guard's (agent span, retries recorded as exception
events, bases attribute) from several agents and error kinds, plus a share of one-off
messages that open incidents of their own, are handed to a running ``IncidentProcessor``
through ``on_end`` (the in-process path: conversion, classification, grouping, writing) and,
separately, as span records through ``submit_records`` in requests of 17 (the OTLP intake
path, in the batches the collector's ``batch/ers`` sends). The figure is
spans per second from the first hand-over until ``force_flush`` returns, everything written.

``on_end`` cost: nanoseconds per call for an ended span that is not an error (the request
path's usual case) and for an error span (the enqueue), next to the trace keeper's.

Last line: ``incident_pipeline_spans_per_s=<n>`` (target >= 50,000): span records
submitted → classified → written. The ``on_end`` path also converts each SDK span into a
record; it is printed before, as ``incident_pipeline_on_end_spans_per_s``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from service.incidents.store import IncidentStore
from telemetry.classifier import load_rules
from telemetry.incident_processor import IncidentProcessor
from telemetry.span_record import SpanRecord
from telemetry.trace_keeper import TraceKeeper

AGENTS = ("MCA", "NPA", "WPA", "BMA")
ERRORS: tuple[tuple[type[BaseException], str], ...] = (
    (ConnectionError, "Connection refused by upstream 10.0.{n}.7:5432"),
    (TimeoutError, "Agent call timed out after {n} ms"),
    (RuntimeError, "Database connection timeout after {n} ms"),
    (MemoryError, "Memory usage exceeded 9{n}%"),
    (ValueError, "Agent processing failure for request req_{n}x7"),
)
ONE_OFF_EVERY = 100  # one span in a hundred has a message no normalisation folds away

# Error spans per OTLP request: the collector's batch/ers sends 17 at most.
REQUEST_SPANS = 17


def _letters(number: int) -> str:
    """A word made of letters only, different for every number: normalisation keeps it."""
    word = ""
    while True:
        number, digit = divmod(number, 26)
        word += chr(ord("a") + digit)
        if not number:
            return word


def make_spans(count: int) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "ers"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("bench")
    for i in range(count):
        agent = AGENTS[i % len(AGENTS)]
        error_type, template = ERRORS[(i // len(AGENTS)) % len(ERRORS)]
        message = template.format(n=i % 97)
        if i % ONE_OFF_EVERY == 0:
            message = f"{message} while handling {_letters(i)}"
        attributes = {
            "ers.agent": agent,
            "ers.user_id": f"{i % 50:08x}",
            "ers.degraded": True,
        }
        with tracer.start_as_current_span(
            f"agent.{agent.lower()}", attributes=attributes, record_exception=False
        ) as span:
            for attempt in (1, 2, 3):
                try:
                    raise error_type(message)
                except BaseException as error:
                    span.record_exception(error, attributes={"ers.attempt": attempt})
            span.set_attribute("error.type", error_type.__qualname__)
            bases = [c.__name__ for c in error_type.__mro__[1:] if c not in (object, BaseException)]
            span.set_attribute("ers.exception.bases", bases)
            span.set_status(Status(StatusCode.ERROR, f"{error_type.__name__}: {message}"))
    provider.shutdown()
    return list(exporter.get_finished_spans())


def measure_pipeline(spans: list[ReadableSpan], repeat: int, as_records: bool) -> dict[str, Any]:
    items: list[Any] = [SpanRecord.from_readable_span(s) for s in spans] if as_records else spans
    # Each hand-over of a record is another span (a trace of its own, as the spans are), as a
    # sender's are: the same span sent again would count once.
    rounds = [
        [replace(r, trace_id=f"{n:08x}{r.trace_id[8:]}") for r in items] if as_records else items
        for n in range(repeat)
    ]
    with tempfile.TemporaryDirectory() as folder:
        store = IncidentStore(Path(folder) / "incidents.db")
        total = len(items) * repeat
        processor = IncidentProcessor(store, load_rules(), queue_size=total + 1)
        started = time.perf_counter()
        for handed in rounds:
            if as_records:
                for at in range(0, len(handed), REQUEST_SPANS):
                    processor.submit_records(handed[at : at + REQUEST_SPANS])
            else:
                for item in handed:
                    processor.on_end(item)
        flushed = processor.force_flush(timeout_millis=600_000)
        elapsed = time.perf_counter() - started
        classified, dropped = processor.spans_classified, processor.spans_dropped
        processor.shutdown()
        _, incidents = store.list(limit=1)
        store.close()
    assert flushed and classified == total, (classified, total)
    return {
        "path": "submit_records" if as_records else "on_end",
        "spans": total,
        "seconds": elapsed,
        "spans_per_s": total / elapsed,
        "incidents": incidents,
        "dropped": dropped,
    }


def _ns_per_call(call: Any, span: ReadableSpan, iterations: int, rounds: int = 5) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for _ in range(iterations):
            call(span)
        samples.append((time.perf_counter_ns() - started) / iterations)
    return statistics.median(samples)


def clean_trace_spans(traces: int) -> list[ReadableSpan]:
    """Ended spans of clean three-span traces, in the order they end."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("bench")
    for _ in range(traces):
        with (
            tracer.start_as_current_span("POST /chat"),
            tracer.start_as_current_span("agent.router"),
            tracer.start_as_current_span("agent.npa"),
        ):
            pass
    provider.shutdown()
    return list(exporter.get_finished_spans())


def measure_on_end(error_span: ReadableSpan, iterations: int) -> dict[str, float]:
    ok_span = clean_trace_spans(1)[0]
    trace_spans = clean_trace_spans(iterations // 3)
    with tempfile.TemporaryDirectory() as folder:
        store = IncidentStore(Path(folder) / "incidents.db")
        processor = IncidentProcessor(store, load_rules(), queue_size=iterations * 6)
        figures = {
            "noop_ns": _ns_per_call(lambda span: None, ok_span, iterations),
            "incident_on_end_ok_ns": _ns_per_call(processor.on_end, ok_span, iterations),
            "incident_on_end_error_ns": _ns_per_call(processor.on_end, error_span, iterations),
            "trace_keeper_on_end_ns": _keeper_ns_per_span(trace_spans),
        }
        processor.shutdown()
        store.close()
    return figures


def _keeper_ns_per_span(spans: list[ReadableSpan], rounds: int = 5) -> float:
    samples = []
    for _ in range(rounds):
        keeper = TraceKeeper()
        on_end = keeper.on_end
        started = time.perf_counter_ns()
        for span in spans:
            on_end(span)
        samples.append((time.perf_counter_ns() - started) / len(spans))
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=20_000, help="distinct spans built")
    parser.add_argument("--repeat", type=int, default=10, help="times each span is handed over")
    parser.add_argument("--iterations", type=int, default=100_000, help="on_end calls per round")
    args = parser.parse_args(argv)
    spans = make_spans(args.spans)
    # The prepared spans are the bench's scaffolding, not the pipeline's: keep them out of the
    # collector's full passes, as a long-running service's start-up objects would be.
    gc.collect()
    gc.freeze()
    pipelines = [measure_pipeline(spans, args.repeat, as_records) for as_records in (False, True)]
    costs = measure_on_end(spans[0], args.iterations)
    print("| path | spans | seconds | spans/s | incidents | dropped |")
    print("|---|---|---|---|---|---|")
    for row in pipelines:
        print(
            f"| {row['path']} | {row['spans']} | {row['seconds']:.2f} | "
            f"{row['spans_per_s']:,.0f} | {row['incidents']} | {row['dropped']} |"
        )
    print()
    print("| on_end of | ns per call (a no-op call costs " + f"{costs['noop_ns']:.0f} ns) |")
    print("|---|---|")
    print(f"| IncidentProcessor, span not in error | {costs['incident_on_end_ok_ns']:.0f} |")
    print(f"| IncidentProcessor, error span (enqueue) | {costs['incident_on_end_error_ns']:.0f} |")
    print(f"| TraceKeeper, spans of clean traces | {costs['trace_keeper_on_end_ns']:.0f} |")
    print()
    for name in (
        "incident_on_end_ok_ns",
        "incident_on_end_error_ns",
        "trace_keeper_on_end_ns",
    ):
        print(f"anchor a no-op on_end call {costs['noop_ns']:.0f} ns")
        print(f"{name}={costs[name]:.0f}")
    on_end_path, records_path = pipelines
    for name, row in (
        ("incident_pipeline_on_end_spans_per_s", on_end_path),
        ("incident_pipeline_spans_per_s", records_path),
    ):
        print(
            f"raw: {row['spans']} spans in {row['seconds']:.2f} s, {row['incidents']} "
            f"incidents, {row['dropped']} dropped"
        )
        print(f"{name}={row['spans_per_s']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
