"""The archive of kept traces, the same bounds on a SQLite file and on PostgreSQL; on
PostgreSQL shared by replicas (one bound for the fleet, each reading what another wrote), and
through an outage: a read says the store is unavailable, a write waits for the server."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from service.errors import StoreUnavailable
from service.incidents.trace_archive_pg import (
    COMPONENT,
    MIGRATIONS,
    SCHEMA,
    KeptTracesUnavailable,
    PgTraceTable,
)
from telemetry.span_record import SpanRecord
from telemetry.trace_archive import TraceArchive
from telemetry.trace_packing import pack
from tests.pg import PostgresServer, apply_migrations
from tests.telemetry.conftest import error_record

Held = Callable[[], set[int]]
# The most JSON one trace's row holds by default, as the README says.
TRACE_BYTES = 8 * 1024 * 1024


def packed(trace_id: int) -> bytes:
    return pack([error_record(trace_id=format(trace_id, "032x"))])


def pg_held(url: str) -> set[int]:
    with psycopg.connect(url) as conn:
        return {int(row[0], 16) for row in conn.execute(f"SELECT trace_id FROM {SCHEMA}.traces")}


@pytest.fixture
def migrated(pg_url: str) -> str:
    apply_migrations(pg_url, {COMPONENT: MIGRATIONS})
    return pg_url


@pytest.fixture(params=["sqlite", "postgresql"])
def archives(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Callable[..., TraceArchive], Held]]:
    """Builds archives of a bound on one file or one migrated database, and reads which
    traces it holds; closes them afterwards."""
    opened: list[TraceArchive] = []
    if request.param == "sqlite":
        path = tmp_path / "kept-traces.sqlite3"

        def held() -> set[int]:
            with sqlite3.connect(path) as db:
                return {int(row[0], 16) for row in db.execute("SELECT trace_id FROM traces")}

        def new(max_traces: int, **options: Any) -> TraceArchive:
            opened.append(TraceArchive(path, max_traces=max_traces, **options))
            return opened[-1]
    else:
        url = request.getfixturevalue("migrated")

        def held() -> set[int]:
            return pg_held(url)

        def new(max_traces: int, **options: Any) -> TraceArchive:
            opened.append(TraceArchive(PgTraceTable(url), max_traces=max_traces, **options))
            return opened[-1]

    try:
        yield new, held
    finally:
        for archive in opened:
            archive.close()


def test_the_table_never_holds_more_than_max_traces_and_keeps_the_newest(archives) -> None:  # noqa: ANN001
    new, held = archives
    archive = new(20)
    for trace_id in range(1, 76):
        archive.write(trace_id, packed(trace_id))
        now = held()
        assert len(now) <= 20, f"{len(now)} traces after writing trace {trace_id}"
        # Only the oldest go: what is held is always the newest run of traces.
        assert now == set(range(trace_id - len(now) + 1, trace_id + 1))
    assert len(held()) >= 18  # a trim leaves nine tenths of the bound
    assert archive.get(format(75, "032x")) is not None
    assert archive.get(format(1, "032x")) is None


def test_a_rewritten_trace_is_one_row(archives) -> None:  # noqa: ANN001
    new, held = archives
    archive = new(10)
    for _ in range(15):  # late spans of one trace rewrite its row
        archive.write(1, packed(1))
    for trace_id in range(2, 11):
        archive.write(trace_id, packed(trace_id))
    assert held() >= set(range(2, 11))


def test_a_stop_writes_the_unnamed_traces_only_into_the_room_left(archives) -> None:  # noqa: ANN001
    # Replica a's incident named six traces; replica b stops in an error storm that its
    # incident named one trace of. b's stop writes that one, and of the rest only what fits:
    # a's traces stay (before, the stop wrote them all and the trim pushed a's out).
    from opentelemetry.sdk.trace import TracerProvider

    from telemetry.trace_keeper import TraceKeeper
    from tests.telemetry.test_trace_keeper import run_trace

    new, held = archives
    replica_a = new(10)
    for trace_id in range(1, 7):
        replica_a.write(trace_id, packed(trace_id))
    keeper = TraceKeeper(archive=new(10))
    provider = TracerProvider()
    provider.add_span_processor(keeper)
    storm = [int(run_trace(provider, fail=True), 16) for _ in range(12)]
    keeper.name("incident-b", [format(storm[0], "032x")])
    provider.shutdown()
    assert held() == {*range(1, 7), storm[0], *storm[-3:]}


def test_the_traces_a_stop_wrote_into_the_room_left_are_the_first_a_later_trim_deletes(
    archives,  # noqa: ANN001
) -> None:
    # An incident named traces 1-5; a replica's clean stop then filled the table with
    # traces no incident names; the next named write trims the table. The trim must take
    # the stop's traces, not the incident's (before, the stop's were the newest by kept_at,
    # and the incident's oldest traces went: its trace links answered 404).
    new, held = archives
    archive = new(10)
    for trace_id in range(1, 6):
        archive.write(trace_id, packed(trace_id))
    archive.write_many(
        [(trace_id, packed(trace_id)) for trace_id in range(101, 106)], fill_only=True
    )
    assert held() == {*range(1, 6), *range(101, 106)}
    archive.write(6, packed(6))
    now = held()
    assert set(range(1, 7)) <= now, f"named traces pushed out: {sorted(set(range(1, 7)) - now)}"
    assert len(now) == 9  # nine tenths of the bound: the two oldest of the stop's went
    assert now - set(range(1, 7)) == {103, 104, 105}


def test_a_named_trace_the_writer_was_too_busy_for_is_written_at_the_stop(archives) -> None:  # noqa: ANN001
    # The writer's queue was full when the incident named its trace: the stop writes it as
    # any named trace, pushing out the oldest of a full table, not only into the room left.
    from opentelemetry.sdk.trace import TracerProvider

    from telemetry.trace_keeper import TraceKeeper
    from tests.telemetry.test_trace_keeper import run_trace

    new, held = archives
    replica_a = new(5)
    for trace_id in range(1, 6):  # full
        replica_a.write(trace_id, packed(trace_id))
    archive = new(5)
    keeper = TraceKeeper(archive=archive)
    provider = TracerProvider()
    provider.add_span_processor(keeper)
    named = run_trace(provider, fail=True)
    keeper.name("incident-b", [named])
    archive.offer = lambda trace_id, packed: False  # type: ignore[method-assign]  # queue full
    assert keeper.archive_named() == 1
    provider.shutdown()
    assert int(named, 16) in held()


def test_replicas_share_one_bound_and_read_what_the_other_wrote(migrated: str) -> None:
    replicas = [TraceArchive(PgTraceTable(migrated), max_traces=20) for _ in range(2)]
    try:
        for trace_id in range(1, 61):  # turn about, as two replicas' incidents name traces
            replicas[trace_id % 2].write(trace_id, packed(trace_id))
            now = pg_held(migrated)
            assert len(now) <= 20, f"{len(now)} traces after writing trace {trace_id}"
            assert now == set(range(trace_id - len(now) + 1, trace_id + 1))
        for trace_id in (59, 60):
            for replica in replicas:
                spans = replica.get(format(trace_id, "032x"))
                assert spans is not None and spans[0].trace_id == format(trace_id, "032x")
    finally:
        for replica in replicas:
            replica.close()


def test_offered_traces_are_written_by_the_writer_in_batches_within_the_bound(
    migrated: str,
) -> None:
    archive = TraceArchive(PgTraceTable(migrated), max_traces=20)
    for trace_id in range(1, 201):  # faster than the writer: they queue, and go in batches
        assert archive.offer(trace_id, packed(trace_id))
    archive.close()
    held = pg_held(migrated)
    assert 18 <= len(held) <= 20
    assert held == set(range(201 - len(held), 201))


def test_an_outage_fails_reads_by_name_and_holds_writes_until_the_server_is_back(
    own_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = own_server.create_database()
    apply_migrations(url, {COMPONENT: MIGRATIONS})
    archive = TraceArchive(PgTraceTable(url), max_traces=20)
    try:
        archive.write(1, packed(1))
        own_server.halt()
        with pytest.raises(KeptTracesUnavailable) as raised:
            archive.get(format(1, "032x"))
        assert isinstance(raised.value, StoreUnavailable)
        assert raised.value.component == "kept_traces"
        assert "check that the server is running" in raised.value.reason
        assert archive.offer(2, packed(2))
        deadline = time.monotonic() + 30
        while "1 kept traces wait to be written in PostgreSQL" not in caplog.text:
            assert time.monotonic() < deadline, "the writer did not try while the server was down"
            time.sleep(0.1)

        own_server.start()
        deadline = time.monotonic() + 60  # attempts 1, 2, 4 ... s apart; the pool reconnects
        while True:
            try:
                if archive.get(format(2, "032x")) is not None:
                    break
            except KeptTracesUnavailable:
                pass  # the pool has not reconnected yet
            assert time.monotonic() < deadline, "the trace offered in the outage was not written"
            time.sleep(0.2)
        assert pg_held(url) == {1, 2}
    finally:
        archive.close()


def entering_the_write_together(archive: TraceArchive, barrier: threading.Barrier) -> None:
    """``archive``'s writes wait at ``barrier`` before they begin: writers that read what a
    table holds before writing have all read it by then."""
    put = archive.table.put

    def together(*args: Any, **options: Any) -> None:
        barrier.wait(timeout=30)
        put(*args, **options)

    archive.table.put = together  # type: ignore[method-assign]


def test_two_writers_adding_spans_to_one_trace_at_once_lose_none(archives) -> None:  # noqa: ANN001
    # Two replicas (or a replica's writer and its stop) archive new spans of one trace at
    # the same moment. Each must add to what the other wrote: before, each read the stored
    # spans outside its write's transaction, and the second write put back the row without
    # the first one's span.
    new, _ = archives
    trace_id = format(0x5EED, "032x")
    writers = [new(20), new(20)]
    writers[0].write(0x5EED, pack([error_record("first failure", trace_id=trace_id)]))
    barrier = threading.Barrier(len(writers))
    for writer in writers:
        entering_the_write_together(writer, barrier)
    failures: list[BaseException] = []

    def write(writer: TraceArchive, name: str) -> None:
        try:
            writer.write(0x5EED, pack([error_record(name, trace_id=trace_id)]))
        except BaseException as exc:  # told by the test, not lost in the thread
            failures.append(exc)

    threads = [
        threading.Thread(target=write, args=(writer, f"failure on replica {n}"))
        for n, writer in enumerate(writers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a write never finished"
    assert failures == []
    stored = writers[1].get(trace_id) or []
    names = ["failure on replica 0", "failure on replica 1", "first failure"]
    assert sorted(span.name for span in stored) == names


def span(name: str, number: int, parent: int | None = None, *, error: bool = False) -> SpanRecord:
    """A span of trace 0x7ACE, id ``number``, under span ``parent``."""
    return SpanRecord.from_dict(
        {
            "name": name,
            "traceId": format(0x7ACE, "032x"),
            "spanId": format(number, "016x"),
            "parentSpanId": format(parent, "016x") if parent is not None else None,
            "startNs": 1_700_000_000_000_000_000 + number,
            "endNs": 1_700_000_000_000_000_000 + number + 1,
            "status": {"code": "ERROR" if error else "UNSET", "message": ""},
        }
    )


def test_one_traces_row_stays_within_its_bound_keeping_the_failure_and_its_ancestors(
    archives,  # noqa: ANN001
) -> None:
    # A sender holding the intake token keeps adding spans to a trace an incident names,
    # at one replica after another: the row stops growing at the bound, and what the
    # incident needs stays, the failing span and the spans above it first.
    from telemetry.trace_merge import TraceBound

    new, _ = archives
    bound = TraceBound(spans=6, bytes=1_000_000)
    first = new(20, bound=bound)
    incident = [span("POST /chat", 1), span("agent.budget", 2, 1, error=True), span("sql", 3, 2)]
    first.write(0x7ACE, pack([*incident, span("cache", 4, 1)]))
    for batch in range(10):
        replica = new(20, bound=bound)
        numbers = range(100 + batch * 3, 103 + batch * 3)
        replica.write(0x7ACE, pack([span(f"flood {n}", n, 1) for n in numbers]))
    # A later failure (with the span above it) comes before spans without one.
    late = [span("remote call", 50, 1), span("remote failure", 51, 50, error=True)]
    new(20, bound=bound).write(0x7ACE, pack(late))

    stored = first.get(format(0x7ACE, "032x")) or []
    names = {s.name for s in stored}
    assert len(stored) == 6, sorted(names)
    assert {"POST /chat", "agent.budget", "remote call", "remote failure"} <= names
    # The rest are what the row held first: the later flood found no room.
    assert names - {"POST /chat", "agent.budget", "remote call", "remote failure"} == {
        "sql",
        "cache",
    }


def test_one_traces_row_holds_at_most_the_bytes_of_its_bound(archives) -> None:  # noqa: ANN001
    # Spans of a megabyte each, sent again and again: by default a row stops at 8 MiB of
    # JSON, as the README says (before, it grew by each write).
    new, _ = archives
    archive = new(20)
    archive.write(0x7ACE, pack([span("POST /chat", 1), span("failure", 2, 1, error=True)]))
    for number in range(10, 10 + TRACE_BYTES // 1_000_000 + 3):
        big = span(f"big {number}", number, 1)
        big.attributes["payload"] = "x" * 1_000_000
        archive.write(0x7ACE, pack([big]))
    stored = archive.get(format(0x7ACE, "032x")) or []
    size = len(json.dumps([s.to_dict() for s in stored]))
    assert size <= TRACE_BYTES, size
    assert {"POST /chat", "failure"} <= {s.name for s in stored}
    assert len(stored) >= TRACE_BYTES // 1_000_000 - 1  # filled, not emptied
