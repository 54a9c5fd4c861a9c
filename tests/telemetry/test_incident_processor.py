from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from service.incidents.merge import GroupOutcome
from service.incidents.model import IncidentStoreUnavailable
from service.incidents.store import IncidentStore
from telemetry.classifier import Classifier
from telemetry.incident_processor import IncidentProcessor, SubmissionRefused
from telemetry.rule_conditions import parse_rules
from tests.telemetry.conftest import HeldStore, Tracing, error_record, fail_span


class DatabaseDown(ConnectionError):
    pass


@pytest.fixture
def store(tmp_path: Path) -> Iterator[IncidentStore]:
    store = IncidentStore(tmp_path / "incidents.db")
    yield store
    store.close()


def pipeline(
    tracing: Tracing, store: IncidentStore, classifier: Classifier, **options: int
) -> IncidentProcessor:
    processor = IncidentProcessor(store, classifier, **options)
    tracing.provider.add_span_processor(processor)
    return processor


def fail_agent(tracing: Tracing, agent: str, error: BaseException) -> None:
    tracer = tracing.tracer
    with (
        tracer.start_as_current_span("POST /chat"),
        tracer.start_as_current_span(
            f"agent.{agent.lower()}", attributes={"ers.agent": agent}
        ) as span,
    ):
        fail_span(span, error)


def test_error_spans_become_one_incident_per_fingerprint(
    tracing: Tracing, store: IncidentStore, default_classifier: Classifier
) -> None:
    processor = pipeline(tracing, store, default_classifier)
    for attempt in range(10):
        fail_agent(tracing, "BMA", DatabaseDown(f"database connection lost after {attempt} ms"))
    for _ in range(4):
        fail_agent(tracing, "NPA", TimeoutError("Agent call timed out"))
    assert processor.force_flush()
    incidents, total = store.list()
    assert total == 2
    by_component = {incident.component: incident for incident in incidents}
    assert by_component["BMA"].count == 10 and by_component["BMA"].type == "database"
    assert by_component["NPA"].count == 4 and by_component["NPA"].type == "timeout"
    assert by_component["BMA"].exception_type == "DatabaseDown"
    assert processor.spans_classified == 14
    assert processor.spans_dropped == 0
    processor.shutdown()


def test_spans_not_in_error_are_ignored(
    tracing: Tracing, store: IncidentStore, default_classifier: Classifier
) -> None:
    processor = pipeline(tracing, store, default_classifier)
    for _ in range(20):
        with tracing.tracer.start_as_current_span("agent.npa", attributes={"ers.agent": "NPA"}):
            pass
    assert processor.force_flush()
    assert store.list()[1] == 0
    assert processor.spans_classified == 0
    processor.shutdown()


def test_a_full_queue_drops_and_counts_without_blocking(
    tracing: Tracing, tmp_path: Path, default_classifier: Classifier
) -> None:
    release = threading.Event()
    entered = threading.Event()

    class BlockedStore(IncidentStore):
        def record_errors(self, items, sent=()):  # type: ignore[override]
            entered.set()
            release.wait(10)
            return super().record_errors(items, sent)

    store = BlockedStore(tmp_path / "i.db")
    processor = pipeline(tracing, store, default_classifier, queue_size=2, batch_size=1)
    fail_agent(tracing, "BMA", DatabaseDown("db down"))
    assert entered.wait(5)  # the worker holds the first span and is stuck in the store
    for _ in range(5):
        fail_agent(tracing, "BMA", DatabaseDown("db down"))
    assert processor.spans_dropped == 3
    release.set()
    assert processor.force_flush()
    assert processor.spans_classified == 3
    assert store.list()[0][0].count == 3
    processor.shutdown()
    store.close()


def test_subscribers_hear_opened_updated_and_reopened(
    tracing: Tracing, store: IncidentStore, default_classifier: Classifier
) -> None:
    processor = pipeline(tracing, store, default_classifier)
    events: list[GroupOutcome] = []
    threads: set[str] = set()

    def listen(event: GroupOutcome) -> None:
        events.append(event)
        threads.add(threading.current_thread().name)

    processor.subscribe(listen)
    fail_agent(tracing, "NPA", RuntimeError("Agent processing failure"))
    processor.force_flush()
    fail_agent(tracing, "NPA", RuntimeError("Agent processing failure"))
    processor.force_flush()
    store.resolve(events[0].incident.id, "ana", "restarted")
    fail_agent(tracing, "NPA", RuntimeError("Agent processing failure"))
    processor.force_flush()
    assert [event.outcome for event in events] == ["opened", "updated", "reopened"]
    assert events[0].classification.protocol == "AGENT_FAILURE"
    assert events[0].incident.count == 1
    assert events[-1].record.name == "agent.npa"
    assert threads == {"ers-incidents"}
    processor.shutdown()


def test_a_raising_subscriber_never_stops_the_worker(
    tracing: Tracing,
    store: IncidentStore,
    default_classifier: Classifier,
    caplog: pytest.LogCaptureFixture,
) -> None:
    processor = pipeline(tracing, store, default_classifier)
    heard: list[str] = []

    def broken(event: GroupOutcome) -> None:
        raise RuntimeError("subscriber bug")

    processor.subscribe(broken)
    unsubscribe = processor.subscribe(lambda event: heard.append(event.outcome))
    fail_agent(tracing, "NPA", RuntimeError("Agent processing failure"))
    processor.force_flush()
    unsubscribe()
    fail_agent(tracing, "WPA", RuntimeError("Agent processing failure"))
    processor.force_flush()
    assert heard == ["opened"]
    # Both failures counted; only the first of a thousand is logged.
    assert [r.getMessage() for r in caplog.records if "subscriber" in r.getMessage()] == [
        "an incident subscriber failed (1 so far)"
    ]
    assert store.list()[1] == 2
    processor.shutdown()


def test_records_from_the_intake_share_the_queue(
    store: IncidentStore, default_classifier: Classifier
) -> None:
    processor = IncidentProcessor(store, default_classifier)
    record = error_record(
        "GET /orders", "SocketException", "Connection reset", resource={"service.name": "orders"}
    )
    assert processor.submit_records([record, error_record(status="OK")]).result(10) is True
    (incident,), _ = store.list()  # written before the future was resolved; the OK span not
    assert (incident.source_service, incident.component, incident.type) == (
        "orders",
        "orders",
        "network",
    )
    processor.shutdown()


def test_shutdown_drains_the_queue_and_refuses_new_spans(
    tmp_path: Path, store: IncidentStore, default_classifier: Classifier
) -> None:
    provider = TracerProvider()
    processor = IncidentProcessor(store, default_classifier, batch_size=7)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("tests")
    for n in range(100):
        with tracer.start_as_current_span("agent.npa", attributes={"ers.agent": "NPA"}) as span:
            fail_span(span, RuntimeError(f"Agent processing failure {n}"))
    provider.shutdown()
    assert processor.spans_classified == 100
    assert store.list()[0][0].count == 100
    with pytest.raises(SubmissionRefused, match="stopping"):
        processor.submit_records([error_record()])
    processor.shutdown()  # twice is fine


def test_a_failing_store_is_counted_and_the_worker_goes_on(
    tmp_path: Path, default_classifier: Classifier, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    class FlakyStore(IncidentStore):
        def record_errors(self, items, sent=()):  # type: ignore[override]
            calls.append(len(items))
            if len(calls) == 1:
                raise OSError("disk full")
            return super().record_errors(items, sent)

    store = FlakyStore(tmp_path / "i.db")
    processor = IncidentProcessor(store, default_classifier)
    assert processor.submit_records([error_record()]).result(10) is False
    # Not an outage the service named: its traceback is what tells what went wrong.
    (failed,) = [r for r in caplog.records if "could not write" in r.getMessage()]
    assert failed.exc_info is not None
    assert processor.submit_records([error_record()]).result(10) is True
    assert processor.spans_failed == 1
    assert store.list()[0][0].count == 1
    processor.shutdown()
    store.close()


def test_an_incident_store_outage_is_logged_in_one_line_and_other_failures_in_full(
    tmp_path: Path,
    default_classifier: Classifier,
    immutable: list[Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = IncidentStore(tmp_path / "incidents.db")
    targets = [tmp_path / "incidents.db", tmp_path / "incidents.db-wal"]
    done = subprocess.run(["chattr", "+i", *map(str, targets)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this filesystem cannot make files immutable: {done.stderr.strip()}")
    immutable.extend(targets)
    processor = IncidentProcessor(store, default_classifier, outages=(IncidentStoreUnavailable,))
    try:
        assert processor.submit_records([error_record()]).result(10) is False
        (outage,) = [r for r in caplog.records if "could not write" in r.getMessage()]
        assert outage.exc_info is None
        assert outage.getMessage().startswith(
            "could not write 1 error spans: the incident store is unavailable: "
        )
        assert "incidents.db" in outage.getMessage()
        subprocess.run(["chattr", "-i", *map(str, targets)], check=True)
        immutable.clear()
        assert processor.submit_records([error_record()]).result(10) is True
    finally:
        processor.shutdown()
        store.close()


def test_rules_can_be_swapped_while_running(
    store: IncidentStore, default_classifier: Classifier
) -> None:
    processor = IncidentProcessor(store, default_classifier)
    everything_critical = Classifier(
        parse_rules(
            {
                "rules": [
                    {
                        "name": "all",
                        "severity": "critical",
                        "type": "system",
                        "impact": "system_down",
                        "recoverable": False,
                    }
                ]
            }
        )
    )
    processor.classifier = everything_critical
    processor.submit_records([error_record()]).result(10)
    assert store.list()[0][0].severity == "critical"
    processor.shutdown()


def test_a_burst_of_failures_is_written_as_one_batch(
    store: IncidentStore, default_classifier: Classifier
) -> None:
    processor = IncidentProcessor(store, default_classifier, linger_s=5.0)
    batches: list[int] = []
    written = threading.Event()

    def heard(event: GroupOutcome) -> None:
        batches.append(event.incident.count)
        written.set()

    processor.subscribe(heard)
    for _ in range(20):
        processor.submit_records([error_record()])
    # Nothing forces the write: the worker lingers, then writes the burst in one transaction.
    assert not written.wait(0.2)
    assert processor.force_flush()
    assert batches == [20]
    assert store.list()[0][0].count == 20
    processor.shutdown()


def test_a_full_batch_is_written_without_waiting_for_the_linger(
    store: IncidentStore, default_classifier: Classifier
) -> None:
    processor = IncidentProcessor(store, default_classifier, batch_size=10, linger_s=30.0)
    written = threading.Event()
    processor.subscribe(lambda event: written.set())
    for _ in range(10):
        processor.submit_records([error_record()])
    assert written.wait(10), "a full batch waited for the 30 s linger"
    assert processor.spans_classified == 10
    processor.shutdown()


def test_submitted_records_are_queued_all_or_none(
    tmp_path: Path, default_classifier: Classifier
) -> None:
    store = HeldStore(tmp_path / "i.db")
    processor = IncidentProcessor(store, default_classifier, queue_size=10, linger_s=0)
    first = processor.submit_records([error_record() for _ in range(30)])  # larger, queue empty
    time.sleep(0.2)  # the worker holds it in the store
    queued = processor.submit_records([error_record() for _ in range(6)])
    with pytest.raises(SubmissionRefused, match="holds"):
        processor.submit_records([error_record() for _ in range(6)])
    store.release.set()
    assert first.result(10) and queued.result(10)
    assert store.list()[0][0].count == 36  # the refused six were not written, not even in part
    assert processor.spans_dropped == 0  # refused is not dropped: the sender sends them again
    processor.shutdown()
    store.close()


def test_a_submission_its_sender_gave_up_on_is_not_written(
    tmp_path: Path, default_classifier: Classifier
) -> None:
    store = HeldStore(tmp_path / "i.db")
    processor = IncidentProcessor(store, default_classifier, linger_s=0)
    busy = processor.submit_records([error_record()])
    time.sleep(0.2)
    abandoned = processor.submit_records([error_record() for _ in range(5)])
    assert abandoned.cancel()  # as the intake's wait does when it answers 503
    store.release.set()
    assert busy.result(10)
    assert processor.force_flush()
    assert store.list()[0][0].count == 1
    processor.shutdown()
    store.close()


def test_own_error_spans_are_held_through_a_store_outage_and_written_after(
    tracing: Tracing, tmp_path: Path, default_classifier: Classifier
) -> None:
    """They were the only record of what failed while the incident store was away (its
    database down): lost, no incident told of the outage once it was back. The intake's
    senders are told (a 503) and send theirs again, so theirs are not held."""
    down = threading.Event()
    down.set()

    class StoreAway(IncidentStore):
        def record_errors(self, items, sent=()):  # type: ignore[override]
            if down.is_set():
                raise IncidentStoreUnavailable("the database at db:5432 does not answer")
            return super().record_errors(items, sent)

    store = StoreAway(tmp_path / "i.db")
    processor = IncidentProcessor(
        store, default_classifier, outages=(IncidentStoreUnavailable,), retry_s=0.05
    )
    tracing.provider.add_span_processor(processor)
    heard: list[GroupOutcome] = []
    processor.subscribe(heard.append)
    try:
        for _ in range(3):
            fail_agent(tracing, "NPA", DatabaseDown("Connection refused"))
        assert processor.submit_records([error_record()]).result(10) is False  # told: a 503
        assert processor.force_flush(10_000)
        assert store.list(status=None)[1] == 0 and processor.spans_failed == 1  # the intake's
        back = time.time()
        down.clear()
        for _ in range(100):  # retried within retry_s of the store's return, bounded
            if store.list()[1]:
                break
            time.sleep(0.05)
        (incident,), _ = store.list()
        assert incident.count == 3 and incident.component == "NPA"
        assert processor.spans_failed == 1
        # Seen when they failed, not when they could be written.
        assert incident.last_seen == max(o.record.end_ns / 1e9 for o in heard)
        assert incident.first_seen <= incident.last_seen < back
        # Told as written late: nothing acts on it as on a new failure.
        assert heard and all("ers.held_s" in outcome.record.attributes for outcome in heard)
    finally:
        processor.shutdown()
        store.close()


def test_held_spans_beyond_the_bound_and_at_shutdown_are_counted_as_not_written(
    tracing: Tracing, tmp_path: Path, default_classifier: Classifier
) -> None:
    class StoreAway(IncidentStore):
        def record_errors(self, items, sent=()):  # type: ignore[override]
            raise IncidentStoreUnavailable("the database does not answer")

    store = StoreAway(tmp_path / "i.db")
    processor = IncidentProcessor(
        store, default_classifier, outages=(IncidentStoreUnavailable,), hold_max=2
    )
    tracing.provider.add_span_processor(processor)
    for _ in range(5):
        fail_agent(tracing, "NPA", DatabaseDown("Connection refused"))
    assert processor.force_flush(10_000)
    assert processor.spans_failed == 3  # two held
    processor.shutdown()
    assert processor.spans_failed == 5
    store.close()
