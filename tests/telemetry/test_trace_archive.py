from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from telemetry.span_record import STACKTRACE_LIMIT
from telemetry.trace_archive import ArchiveUnavailable, Row, SqliteTraceTable, TraceArchive
from telemetry.trace_packing import as_record, pack, unpack
from tests.telemetry.conftest import error_record


def trace_ids(path: Path) -> set[int]:
    with sqlite3.connect(path) as db:
        return {int(row[0], 16) for row in db.execute("SELECT trace_id FROM traces")}


def write(archive: TraceArchive, trace_id: int) -> None:
    archive.write(trace_id, pack([error_record(trace_id=format(trace_id, "032x"))]))


def test_the_file_never_holds_more_than_max_traces_and_keeps_the_newest(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "kept-traces.sqlite3"
    archive = TraceArchive(path, max_traces=20)
    for trace_id in range(1, 76):
        write(archive, trace_id)
        held = trace_ids(path)
        assert len(held) <= 20, f"{len(held)} traces after writing trace {trace_id}"
        # Only the oldest go: what is held is always the newest run of traces.
        assert held == set(range(trace_id - len(held) + 1, trace_id + 1))
    assert len(trace_ids(path)) >= 18  # a trim leaves nine tenths of the bound
    archive.close()


def test_a_reopened_archive_counts_the_traces_its_file_already_holds(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "kept-traces.sqlite3"
    first = TraceArchive(path, max_traces=10)
    for trace_id in range(1, 11):
        write(first, trace_id)
    first.close()
    reopened = TraceArchive(path, max_traces=10)
    write(reopened, 11)
    held = trace_ids(path)
    assert len(held) <= 10 and 11 in held and 1 not in held
    reopened.close()


def test_a_rewritten_trace_is_not_counted_twice_against_the_newest(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "kept-traces.sqlite3"
    archive = TraceArchive(path, max_traces=10)
    for _ in range(15):  # late spans of one trace rewrite its row
        write(archive, 1)
    for trace_id in range(2, 11):
        write(archive, trace_id)
    assert trace_ids(path) >= set(range(2, 11))
    archive.close()


def test_traces_offered_together_are_written_together_and_the_newest_kept(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "kept-traces.sqlite3"
    archive = TraceArchive(path, max_traces=20)
    for trace_id in range(1, 201):  # faster than the writer: they queue, and go in batches
        archive.offer(trace_id, pack([error_record(trace_id=format(trace_id, "032x"))]))
    archive.close()
    held = trace_ids(path)
    assert 18 <= len(held) <= 20
    assert held == set(range(201 - len(held), 201))


def test_a_trace_that_cannot_be_written_loses_only_itself(tmp_path, caplog) -> None:  # noqa: ANN001
    path = tmp_path / "kept-traces.sqlite3"
    archive = TraceArchive(path, max_traces=20)
    for trace_id in range(1, 4):
        # A row without spans breaks the table's NOT NULL.
        packd = pack([error_record(trace_id=format(trace_id, "032x"))])
        archive.offer(trace_id, packd if trace_id != 2 else None)  # type: ignore[arg-type]
    archive.close()
    assert trace_ids(path) == {1, 3}
    assert "could not keep trace 00000000000000000000000000000002 on disk" in caplog.text


class FlakyTable(SqliteTraceTable):
    """A file whose writes fail as an unreachable database server's do while ``down``."""

    place = "in the flaky table"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.down = True
        self.attempts = threading.Semaphore(0)

    def put(self, rows: Sequence[Row], max_traces: int, trim_to: int, **options: Any) -> None:
        try:
            if self.down:
                raise ArchiveUnavailable("no connection within 0.5 s: the server is unreachable")
            super().put(rows, max_traces, trim_to, **options)
        finally:  # once the attempt is over: a reader then sees what it wrote
            self.attempts.release()


def test_traces_offered_while_the_table_is_unreachable_are_written_once_it_is_back(
    tmp_path: Path, caplog
) -> None:  # noqa: ANN001
    path = tmp_path / "kept-traces.sqlite3"
    table = FlakyTable(path)
    archive = TraceArchive(table, max_traces=20)
    for trace_id in (1, 2):
        archive.offer(trace_id, pack([error_record(trace_id=format(trace_id, "032x"))]))
    assert table.attempts.acquire(timeout=10)
    assert trace_ids(path) == set()

    table.down = False
    deadline = time.monotonic() + 30  # the next attempt is a second or two later
    while trace_ids(path) != {1, 2}:
        assert time.monotonic() < deadline, trace_ids(path)
        assert table.attempts.acquire(timeout=10)
    archive.close()
    assert "kept traces wait to be written in the flaky table, tried again in 1 s" in caplog.text


def test_traces_still_unwritten_when_the_archive_closes_are_named_in_the_log(
    tmp_path: Path, caplog
) -> None:  # noqa: ANN001
    archive = TraceArchive(FlakyTable(tmp_path / "kept-traces.sqlite3"), max_traces=20)
    for trace_id in (1, 2, 3):
        archive.offer(trace_id, pack([error_record(trace_id=format(trace_id, "032x"))]))
    archive.close()
    assert "3 kept traces were not written in the flaky table before stopping" in caplog.text


def test_a_stop_during_an_outage_says_what_it_could_not_write_without_a_traceback(
    tmp_path: Path, caplog
) -> None:  # noqa: ANN001
    archive = TraceArchive(FlakyTable(tmp_path / "kept-traces.sqlite3"), max_traces=20)
    archive.close(fill=[(7, pack([error_record(trace_id=format(7, "032x"))]))])
    assert "could not write 1 kept traces on closing: no connection within 0.5 s" in caplog.text
    assert "Traceback" not in caplog.text  # an outage, not a bug


def test_a_packed_trace_unpacks_to_the_records_of_its_spans() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with (
        tracer.start_as_current_span("root", kind=SpanKind.SERVER, attributes={"n": 1}),
        tracer.start_as_current_span("agent", attributes={"bases": ("A", "B")}) as span,
    ):
        span.add_event("exception", {"exception.type": "E", "exception.stacktrace": "x" * 9000})
        span.set_status(Status(StatusCode.ERROR, "E: broke"))
    spans = [*exporter.get_finished_spans(), error_record()]  # an intake record beside them

    records = unpack(pack(spans))

    assert [r.to_dict() for r in records] == [as_record(s).to_dict() for s in spans]
    agent = records[0]
    assert agent.attributes["bases"] == ["A", "B"]  # as after a JSON round trip
    assert len(agent.events[0].attributes["exception.stacktrace"]) == STACKTRACE_LIMIT
    assert (agent.status_code, agent.exception_type, agent.kind) == ("ERROR", "E", "INTERNAL")
    assert records[1].kind == "SERVER" and records[0].parent_span_id == records[1].span_id
