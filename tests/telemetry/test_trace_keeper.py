from __future__ import annotations

import json

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Status, StatusCode

from telemetry.classifier import Classifier
from telemetry.span_record import SpanRecord
from telemetry.trace_keeper import TraceKeeper, span_tree
from telemetry.trace_merge import TraceBound
from telemetry.trace_packing import pack
from tests.telemetry.conftest import error_record


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def keeper_and_tracer(**options: float) -> tuple[TraceKeeper, TracerProvider]:
    keeper = TraceKeeper(**options)
    provider = TracerProvider()
    provider.add_span_processor(keeper)
    return keeper, provider


def run_trace(provider: TracerProvider, *, fail: bool, children: int = 2) -> str:
    tracer = provider.get_tracer("tests")
    with (
        tracer.start_as_current_span("POST /chat") as root,
        tracer.start_as_current_span("agent.router"),
    ):
        for index in range(children - 1):
            with tracer.start_as_current_span(f"agent.step{index}") as span:
                if fail and index == children - 2:
                    span.set_status(Status(StatusCode.ERROR, "RuntimeError: boom"))
    return format(root.get_span_context().trace_id, "032x")


def test_a_trace_with_an_error_is_kept_with_all_its_spans() -> None:
    keeper, provider = keeper_and_tracer()
    trace_id = run_trace(provider, fail=True, children=3)
    records = keeper.get_trace(trace_id)
    assert records is not None
    assert [r.name for r in records] == ["POST /chat", "agent.router", "agent.step0", "agent.step1"]
    assert records[-1].status_code == "ERROR"
    assert keeper.stats()["traces_kept_now"] == 1


def test_a_clean_trace_is_dropped() -> None:
    keeper, provider = keeper_and_tracer()
    trace_id = run_trace(provider, fail=False)
    assert keeper.get_trace(trace_id) is None
    assert keeper.stats()["traces_pending"] == 0
    assert keeper.stats()["traces_dropped"] == 1


def test_the_span_budget_evicts_the_oldest_traces_first() -> None:
    keeper, provider = keeper_and_tracer(span_budget=10)
    trace_ids = [run_trace(provider, fail=True, children=3) for _ in range(4)]  # 4 spans each
    assert keeper.get_trace(trace_ids[0]) is None
    assert keeper.get_trace(trace_ids[1]) is None
    assert keeper.get_trace(trace_ids[2]) is not None
    assert keeper.get_trace(trace_ids[3]) is not None
    assert keeper.stats()["spans_kept_now"] == 8
    assert keeper.stats()["traces_evicted"] == 2


def test_an_error_trace_is_readable_before_its_root_ends() -> None:
    keeper, provider = keeper_and_tracer()
    tracer = provider.get_tracer("tests")
    with tracer.start_as_current_span("POST /chat") as root:
        with tracer.start_as_current_span("agent.npa") as span:
            span.set_status(Status(StatusCode.ERROR, "boom"))
        trace_id = format(root.get_span_context().trace_id, "032x")
        assert [r.name for r in keeper.get_trace(trace_id) or []] == ["agent.npa"]
    assert [r.name for r in keeper.get_trace(trace_id) or []] == ["POST /chat", "agent.npa"]


def test_traces_whose_root_never_ends_here_are_settled_after_lingering() -> None:
    clock = Clock()
    keeper, provider = keeper_and_tracer(linger_s=30, clock=clock)
    tracer = provider.get_tracer("tests")
    root = tracer.start_span("POST /chat")  # never ended: an abandoned request
    with tracer.start_as_current_span("agent.npa", context=_context_of(root)) as span:
        span.set_status(Status(StatusCode.ERROR, "boom"))
    assert keeper.stats()["traces_pending"] == 1
    clock.now = 31
    run_trace(provider, fail=False)  # any later span lets the keeper sweep
    assert keeper.stats()["traces_pending"] == 0
    assert keeper.stats()["traces_kept"] == 1


def test_pending_spans_are_bounded() -> None:
    keeper, provider = keeper_and_tracer(pending_span_limit=5)
    tracer = provider.get_tracer("tests")
    with tracer.start_as_current_span("POST /chat"):
        for index in range(12):
            with tracer.start_as_current_span(f"step{index}"):
                pass
        assert keeper.stats()["spans_pending"] <= 5


def test_span_tree_nests_children_under_their_parents() -> None:
    keeper, provider = keeper_and_tracer()
    trace_id = run_trace(provider, fail=True, children=3)
    (root,) = span_tree(keeper.get_trace(trace_id) or [])
    assert root["name"] == "POST /chat" and root["parentSpanId"] is None
    (router,) = root["children"]
    assert [child["name"] for child in router["children"]] == ["agent.step0", "agent.step1"]
    failed = router["children"][1]
    assert failed["status"] == {"code": "ERROR", "message": "RuntimeError: boom"}
    assert failed["children"] == [] and failed["durationMs"] >= 0
    assert set(failed) >= {"spanId", "start", "end", "attributes", "events"}


def test_unknown_or_malformed_trace_ids_give_none() -> None:
    keeper, _ = keeper_and_tracer()
    assert keeper.get_trace("0" * 32) is None
    assert keeper.get_trace("not-hex") is None


def _context_of(span):
    from opentelemetry import trace

    return trace.set_span_in_context(span)


def test_intake_records_of_a_failing_trace_are_kept_and_clean_ones_dropped() -> None:
    from tests.telemetry.conftest import error_record

    keeper = TraceKeeper()
    failing = "1" * 32
    records = [
        error_record("charge", trace_id=failing),
        error_record("POST /pay", trace_id=failing, status="OK"),
        error_record("GET /health", trace_id="2" * 32, status="OK"),
    ]
    assert keeper.keep_records(records) == 1
    keeper.keep_records(records[:1])  # a retry of the same export
    kept = keeper.get_trace(failing)
    assert kept is not None and sorted(r.name for r in kept) == ["POST /pay", "charge"]
    assert keeper.get_trace("2" * 32) is None


def test_kept_traces_outlive_the_keeper_in_its_bounded_file(tmp_path) -> None:  # noqa: ANN001
    from telemetry.trace_archive import TraceArchive
    from tests.telemetry.conftest import error_record

    path = tmp_path / "kept-traces.sqlite3"
    keeper = TraceKeeper(archive=TraceArchive(path, max_traces=3))
    provider = TracerProvider()
    provider.add_span_processor(keeper)
    local = run_trace(provider, fail=True)  # written by the archive's thread
    provider.shutdown()  # the keeper's shutdown writes what is queued
    reopened = TraceKeeper(archive=TraceArchive(path, max_traces=3))
    records = reopened.get_trace(local)
    assert records is not None and [r.name for r in records][0] == "POST /chat"
    assert any(r.is_error for r in records)

    intake = ["a" * 32, "b" * 32, "c" * 32]
    for trace_id in intake:
        reopened.keep_records([error_record("charge", trace_id=trace_id)])
    reopened.name("incident-1", intake)  # named: written on shutdown, pushing out the oldest
    reopened.shutdown()
    last = TraceKeeper(archive=TraceArchive(path, max_traces=3))
    assert last.get_trace(local) is None  # the oldest of four went first
    assert all(last.get_trace(trace_id) is not None for trace_id in intake)
    last.shutdown()


def test_intake_spans_arriving_while_the_local_root_runs_are_kept_with_all_its_spans() -> None:
    from tests.telemetry.conftest import error_record

    keeper, provider = keeper_and_tracer()
    tracer = provider.get_tracer("tests")
    with tracer.start_as_current_span("POST /chat") as root:
        trace_id = format(root.get_span_context().trace_id, "032x")
        with tracer.start_as_current_span("agent.helper"):
            pass  # ended here before the other service's spans arrive
        remote = error_record("POST /chat", trace_id=trace_id, resource={"service.name": "agent"})
        keeper.keep_records([remote])
    records = keeper.get_trace(trace_id)
    assert records is not None
    assert sorted(r.name for r in records) == ["POST /chat", "POST /chat", "agent.helper"]
    assert keeper.stats()["traces_pending"] == 0
    assert "agent" in {node["service"] for node in span_tree(records)}


def _on_disk(path, wait_for: str | None = None) -> set[str]:  # noqa: ANN001
    """The trace ids the archive's file holds; waits (bounded) for ``wait_for`` to be one."""
    import sqlite3
    import time

    deadline = time.monotonic() + 10
    while True:
        db = sqlite3.connect(path)
        try:
            ids = {row[0] for row in db.execute("SELECT trace_id FROM traces")}
        finally:
            db.close()
        if wait_for is None or wait_for in ids or time.monotonic() > deadline:
            return ids
        time.sleep(0.02)


def test_only_named_traces_are_written_before_shutdown_and_the_rest_on_it(tmp_path) -> None:  # noqa: ANN001
    from telemetry.trace_archive import TraceArchive

    path = tmp_path / "kept-traces.sqlite3"
    keeper, provider = keeper_and_tracer(archive=TraceArchive(path))  # type: ignore[arg-type]
    storm = [run_trace(provider, fail=True) for _ in range(30)]
    keeper.name("incident-1", storm[:5])
    keeper.name("incident-1", storm[-3:])  # the incident's newest traces replace the older ones
    keeper.name("incident-2", [storm[10], "not-hex", "f" * 32])  # unknown ids are no error
    assert keeper.archive_named() == 4
    assert _on_disk(path, wait_for=storm[10]) == {*storm[-3:], storm[10]}
    assert keeper.archive_named() == 0  # written once

    # A late span of a written trace writes it again; of an unwritten one, nothing yet.
    tracer = provider.get_tracer("tests")
    from opentelemetry import trace

    for trace_id in (storm[-1], storm[0]):
        context = trace.SpanContext(
            int(trace_id, 16),
            0xABC,
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
        parent = trace.set_span_in_context(trace.NonRecordingSpan(context))
        tracer.start_span("late", context=parent).end()
    keeper.archive.close()  # type: ignore[union-attr]  # writes what is queued
    keeper.archive = TraceArchive(path)
    assert [r.name for r in keeper.archive.get(storm[-1]) or []][-1] == "late"
    assert keeper.archive.get(storm[0]) is None

    provider.shutdown()  # a clean stop writes every kept trace
    assert _on_disk(path) == set(storm)
    reopened = TraceKeeper(archive=TraceArchive(path))
    records = reopened.get_trace(storm[0])
    assert records is not None and [r.name for r in records][-1] == "late"
    reopened.shutdown()


def test_a_trace_named_before_its_root_ends_is_written_when_it_settles(tmp_path) -> None:  # noqa: ANN001
    from telemetry.trace_archive import TraceArchive

    path = tmp_path / "kept-traces.sqlite3"
    keeper, provider = keeper_and_tracer(archive=TraceArchive(path))  # type: ignore[arg-type]
    tracer = provider.get_tracer("tests")
    with tracer.start_as_current_span("POST /chat") as root:
        with tracer.start_as_current_span("agent.budget") as span:
            span.set_status(Status(StatusCode.ERROR, "RuntimeError: boom"))
        trace_id = format(root.get_span_context().trace_id, "032x")
        keeper.name("incident-1", [trace_id])  # the incident was written before the reply
        assert keeper.archive_named() == 0
    assert _on_disk(path, wait_for=trace_id) == {trace_id}
    provider.shutdown()


def test_a_span_of_a_kept_trace_reads_back_as_the_classifier_saw_it(
    default_classifier: Classifier,
) -> None:
    # What `ers trace -o json` prints, handed to `ers classify --explain`.
    record = error_record(
        "GET /orders",
        "SocketException",
        "Connection reset",
        resource={"service.name": "orders", "deployment.environment": "prod"},
    )
    record.start_ns, record.end_ns = 1_700_000_000_000_000_000, 1_700_000_000_250_000_000
    (node,) = span_tree([record])
    again = SpanRecord.from_dict(json.loads(json.dumps(node)))
    # Before: service unknown_service, no resource, so another fingerprint and rule.
    assert default_classifier.classify(again) == default_classifier.classify(record)
    assert (again.service_name, again.resource) == ("orders", record.resource)
    assert (again.start_ns, again.end_ns, again.kind) == (
        record.start_ns,
        record.end_ns,
        record.kind,
    )


def test_secrets_this_processs_own_spans_carry_are_redacted_when_kept() -> None:
    """An in-process agent is the operators' code: the instrumentation it uses may capture
    every header, or put a credential in a URL or a status. A kept trace is read by operators
    and written to the archive: redacted, as another service's spans are on arrival."""
    keeper, provider = keeper_and_tracer()
    tracer = provider.get_tracer("tests")
    with tracer.start_as_current_span("POST /chat") as root:
        with tracer.start_as_current_span("GET") as span:
            span.set_attributes(
                {
                    "http.request.header.authorization": ("Bearer sk-req-1a2b",),
                    "http.response.header.x_session_token": ("sk-sess-3c4d",),
                    "url.full": "https://bot:pw-5e6f@api.example/v1?key=sk-q-7a8b",
                    "http.response.header.content_type": ("application/json",),
                }
            )
            span.set_status(Status(StatusCode.ERROR, "failed at postgres://ers:pw-9c0d@db/x"))
        trace_id = format(root.get_span_context().trace_id, "032x")
        still_open = keeper.get_trace(trace_id)  # the root pending: built from the SDK's spans
    kept = keeper.get_trace(trace_id)  # packed: built from the bytes kept
    for records in (still_open, kept):
        assert records is not None
        (call,) = [r for r in records if r.name == "GET"]
        text = json.dumps([r.to_dict() for r in records])
        for secret in ("sk-req-1a2b", "sk-sess-3c4d", "pw-5e6f", "sk-q-7a8b", "pw-9c0d"):
            assert secret not in text, secret
        assert call.attributes["http.response.header.content_type"] == ["application/json"]
        assert call.attributes["http.response.header.x_session_token"] == ["REDACTED"]


def test_a_failure_arriving_after_a_restart_adds_to_its_archived_trace(tmp_path) -> None:  # noqa: ANN001
    """A trace written before a restart (or by another replica of a fleet) and a later span
    of it that reaches a keeper holding none of it: the trace answers with both, now and
    after the next restart, and the spans an earlier incident named are not overwritten."""
    from telemetry.trace_archive import TraceArchive

    path = tmp_path / "kept-traces.sqlite3"
    trace_id = "d263bec89195e84ba252d150e68ba81f"
    first = TraceKeeper(archive=TraceArchive(path))
    first.keep_records([error_record("call carrier", trace_id=trace_id)])
    first.name("incident-1", [trace_id])
    first.shutdown()

    second = TraceKeeper(archive=TraceArchive(path))  # after a restart
    second.keep_records([error_record("second failure", trace_id=trace_id)])
    names = ["call carrier", "second failure"]
    assert sorted(r.name for r in second.get_trace(trace_id) or []) == names
    second.name("incident-2", [trace_id])
    second.shutdown()  # writes the trace it holds

    third = TraceKeeper(archive=TraceArchive(path))
    assert sorted(r.name for r in third.get_trace(trace_id) or []) == names
    third.shutdown()


def test_a_held_trace_answers_from_memory_when_the_archive_does_not_answer(tmp_path) -> None:  # noqa: ANN001
    """An archive whose reads hang (its database server stopped, its connections open): a
    trace held here answers with what is held, and says why the archive's spans are not
    among them; the read hanging meanwhile does not hold up the next answer either."""
    import threading

    from telemetry.trace_archive import SqliteTraceTable, TraceArchive

    class FrozenTable(SqliteTraceTable):
        def __init__(self, path) -> None:  # noqa: ANN001
            super().__init__(path)
            self.thawed = threading.Event()

        def spans(self, trace_id_hex: str) -> str | None:
            self.thawed.wait(timeout=60)
            return super().spans(trace_id_hex)

    table = FrozenTable(tmp_path / "kept-traces.sqlite3")
    keeper = TraceKeeper(archive=TraceArchive(table))
    trace_id = format(0xF0F0, "032x")
    keeper.keep_records([error_record("held here", trace_id=trace_id)])
    try:
        for _ in range(6):  # more than the reads that may run at once
            found = keeper.read_trace(trace_id)
            assert found is not None
            records, unread = found
            assert [r.name for r in records] == ["held here"]
            assert unread in (
                "the archive did not answer within 1 s",
                "earlier reads of the archive have not answered for 1 s",
            ), unread
    finally:
        table.thawed.set()
    keeper.shutdown()


def test_one_trace_receiving_spans_without_end_holds_its_bound_and_keeps_its_failure() -> None:
    """A lone kept trace is never evicted (the budget always leaves one), so a sender repeating
    its trace id would grow it without end: it stops at its own bound, keeping the error
    span and the spans above it first, then the spans it held before the arrivals; what is
    left out is counted."""
    keeper = TraceKeeper(bound=TraceBound(spans=5, bytes=1_000_000))
    trace_id = "d" * 32
    root = error_record("GET /cart", trace_id=trace_id, status="OK")
    failing = error_record("SELECT cart", trace_id=trace_id)
    failing.parent_span_id = root.span_id
    polls = [error_record(f"poll {index}", trace_id=trace_id, status="OK") for index in range(2)]
    assert keeper.keep_records([failing, *polls]) == 1
    for index in range(50):
        keeper.keep_records([error_record(f"flood {index}", trace_id=trace_id, status="OK")])
    keeper.keep_records([root])  # the failure's parent, arriving last, comes before the rest
    names = {record.name for record in keeper.get_trace(trace_id) or []}
    assert names == {"GET /cart", "SELECT cart", "poll 0", "poll 1", "flood 0"}
    assert keeper.stats()["spans_kept_now"] == 5
    assert keeper.stats()["spans_left_out"] == 49  # flood 2 to 49, then flood 1


def test_late_spans_of_a_lone_kept_trace_stay_within_the_span_budget() -> None:
    from opentelemetry import trace

    keeper, provider = keeper_and_tracer(span_budget=10)
    trace_id = run_trace(provider, fail=True, children=3)  # 4 spans, one failed
    context = trace.SpanContext(
        int(trace_id, 16), 0xABC, is_remote=True, trace_flags=trace.TraceFlags(1)
    )
    parent = trace.set_span_in_context(trace.NonRecordingSpan(context))
    tracer = provider.get_tracer("tests")
    for _ in range(30):
        tracer.start_span("late", context=parent).end()
    records = keeper.get_trace(trace_id) or []
    assert len(records) == 10 and keeper.stats()["spans_kept_now"] == 10
    assert [record.name for record in records if record.is_error] == ["agent.step1"]
    assert keeper.stats()["spans_left_out"] == 24


def test_a_kept_trace_holds_at_most_the_bytes_of_its_bound() -> None:
    bound = TraceBound(spans=1000, bytes=50_000)
    keeper = TraceKeeper(bound=bound)
    trace_id = "e" * 32
    keeper.keep_records([error_record("charge", trace_id=trace_id)])
    for index in range(40):
        payload = {"payload": f"{index:04}" + "x" * 4000}  # one string each, as received
        spans = [error_record(f"poll {index}", trace_id=trace_id, status="OK", attributes=payload)]
        keeper.keep_records(spans)
    records = keeper.get_trace(trace_id) or []
    assert len(pack(records)) <= bound.bytes
    assert "charge" in {record.name for record in records} and 5 < len(records) < 41
    assert keeper.stats()["spans_left_out"] == 41 - len(records)
