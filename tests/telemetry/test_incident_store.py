"""The incident store's behaviour, the same on SQLite and on a real PostgreSQL server:
including two writers on one database (two replicas, each its own store and connections)
sharing one set of incidents without lost updates. Then what only PostgreSQL has: its schema
comes from versioned migrations, its failures name the server but never the password, it
survives a server restart, and one replica claims each fleet-wide action."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from service.incidents.model import IncidentStoreUnavailable
from service.incidents.service import MIGRATIONS as INCIDENT_STATE
from service.incidents.store import (
    IllegalTransition,
    IncidentNotFound,
    IncidentStore,
    UnknownTimelineKind,
)
from service.incidents.store_pg import COMPONENT, PgIncidentStore
from service.incidents.writes import SENT_BATCHES_KEPT_S
from service.stores.pg_pool import PgPool
from service.stores.session_names import presence_name
from telemetry.classifier import Classification, Classifier
from telemetry.sink import sent_key
from telemetry.span_record import SpanRecord
from tests.pg import PostgresServer, apply_migrations
from tests.telemetry.conftest import error_record

NewStore = Callable[..., IncidentStore]
RECORDS_PER_REPLICA = 200


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "postgresql"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NewStore]:
    """Builds incident stores (keyword options as IncidentStore takes them) on an SQLite
    file or on a fresh, migrated PostgreSQL database; closes them afterwards."""
    if request.param == "sqlite":

        def build(**options: Any) -> IncidentStore:
            return IncidentStore(tmp_path / "incidents.db", **options)
    else:
        url = request.getfixturevalue("pg_url")
        apply_migrations(url, INCIDENT_STATE)

        def build(**options: Any) -> IncidentStore:
            return PgIncidentStore(url, **options)

    made: list[IncidentStore] = []

    def make(**options: Any) -> IncidentStore:
        made.append(build(**options))
        return made[-1]

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(new_store: NewStore, clock: Clock) -> IncidentStore:
    return new_store(clock=clock, quiet_period_s=60)


def record_db_error(store: IncidentStore, classifier: Classifier, agent: str = "BMA", n: int = 1):
    record = error_record(
        f"agent.{agent.lower()}",
        "SimulatedDatabaseError",
        f"Database connection timeout after {n} ms",
        attributes={"ers.agent": agent},
        trace_id=f"{n:032x}",
    )
    return store.record_error(record, classifier.classify(record))


def test_incident_ids_look_like_the_seed(
    store: IncidentStore, default_classifier: Classifier
) -> None:
    incident, outcome = record_db_error(store, default_classifier)
    assert outcome == "opened"
    assert re.fullmatch(r"INC_1700000000000_[a-z0-9]{6}", incident.id)
    assert incident.to_dict()["classification"] == {
        "severity": "high",
        "type": "database",
        "impact": "service_degraded",
        "recoverable": True,
        "rule": "database",
    }
    assert incident.to_dict()["response"]["protocol"] == "SERVICE_DEGRADATION"


def test_repeated_failures_group_into_one_incident(
    store: IncidentStore, default_classifier: Classifier, clock: Clock
) -> None:
    first, _ = record_db_error(store, default_classifier, n=1)
    clock.now += 5
    again, outcome = record_db_error(store, default_classifier, n=2)
    assert outcome == "updated"
    assert again.id == first.id
    assert again.count == 2
    assert again.last_seen == first.first_seen + 5
    assert again.trace_ids == [f"{1:032x}", f"{2:032x}"]
    assert store.list()[1] == 1


def test_trace_ids_keep_the_most_recent_up_to_the_limit(
    new_store: NewStore, default_classifier: Classifier
) -> None:
    store = new_store(max_trace_ids=3)
    for n in range(1, 6):
        incident, _ = record_db_error(store, default_classifier, n=n)
    assert incident.trace_ids == [f"{n:032x}" for n in (3, 4, 5)]
    assert store.get(incident.id).trace_ids == incident.trace_ids


def test_lifecycle_open_acknowledged_mitigated_resolved(
    store: IncidentStore, default_classifier: Classifier, clock: Clock
) -> None:
    incident, _ = record_db_error(store, default_classifier)
    clock.now += 10
    assert store.acknowledge(incident.id, "ana", "looking").status == "acknowledged"
    clock.now += 35
    mitigated = store.mitigate(incident.id, "ana", "breaker open, cache serving")
    assert mitigated.status == "mitigated"
    assert mitigated.recovery_time_s == 45
    clock.now += 100
    resolved = store.resolve(incident.id, "ana", "database restarted")
    assert resolved.status == "resolved"
    assert resolved.recovery_time_s == 45  # measured to the first of mitigated / resolved
    assert store.get(incident.id).to_dict()["response"]["recoveryTime"] == "45 seconds"
    changes = [e.message for e in store.timeline(incident.id) if e.kind == "status_changed"]
    assert changes == [
        "open → acknowledged: looking",
        "acknowledged → mitigated: breaker open, cache serving",
        "mitigated → resolved: database restarted",
    ]


def test_a_mitigated_incident_is_acknowledged_and_stays_mitigated(
    store: IncidentStore, default_classifier: Classifier, clock: Clock
) -> None:
    incident, _ = record_db_error(store, default_classifier)
    clock.now += 5
    store.mitigate(incident.id, "responder", "agent isolated; fallbacks answer")
    clock.now += 60
    acknowledged = store.acknowledge(incident.id, "admin:token", "on it")
    assert acknowledged.status == "mitigated"
    assert acknowledged.acknowledged_at == clock.now
    stored = store.get(incident.id)
    assert (stored.status, stored.acknowledged_at) == ("mitigated", clock.now)
    assert stored.recovery_time_s == 5
    last = store.timeline(incident.id)[-1]
    assert (last.kind, last.actor, last.message) == (
        "note",
        "admin:token",
        "acknowledged; stays mitigated: on it",
    )


def test_a_second_acknowledgement_is_noted_and_keeps_the_first_time(
    store: IncidentStore, default_classifier: Classifier, clock: Clock
) -> None:
    incident, _ = record_db_error(store, default_classifier)
    first = store.acknowledge(incident.id, "ana", "looking").acknowledged_at
    clock.now += 30
    again = store.acknowledge(incident.id, "bo", "taking over")
    assert (again.status, again.acknowledged_at) == ("acknowledged", first)
    entries = [(e.actor, e.message) for e in store.timeline(incident.id)[-2:]]
    assert entries == [
        ("ana", "open → acknowledged: looking"),
        ("bo", "acknowledged again: taking over"),
    ]


@pytest.mark.parametrize(
    ("steps", "illegal", "message"),
    [
        (["resolve"], "resolve", "is resolved and cannot be resolved; it reopens by itself"),
        (["resolve"], "acknowledge", "is resolved and cannot be acknowledged"),
        (["resolve"], "mitigate", "is resolved and cannot be mitigated"),
    ],
)
def test_illegal_transitions_raise_a_named_error(
    store: IncidentStore,
    default_classifier: Classifier,
    steps: list,
    illegal: str,
    message: str,
) -> None:
    incident, _ = record_db_error(store, default_classifier)
    for step in steps:
        getattr(store, step)(incident.id, "ana", "")
    with pytest.raises(IllegalTransition, match=message):
        getattr(store, illegal)(incident.id, "ana", "")


def test_unknown_incidents_raise_not_found(store: IncidentStore) -> None:
    with pytest.raises(IncidentNotFound, match="no incident with id 'INC_0_nope00'"):
        store.get("INC_0_nope00")
    with pytest.raises(IncidentNotFound):
        store.resolve("INC_0_nope00", "ana", "")
    with pytest.raises(IncidentNotFound):
        store.add_timeline("INC_0_nope00", "note", "hi", "ana")


def test_a_resolved_incident_reopens_when_its_failure_recurs(
    store: IncidentStore, default_classifier: Classifier, clock: Clock
) -> None:
    incident, _ = record_db_error(store, default_classifier)
    store.resolve(incident.id, "ana", "fixed")
    clock.now += 600
    again, outcome = record_db_error(store, default_classifier, n=7)
    assert outcome == "reopened"
    assert again.id == incident.id
    assert (again.status, again.reopen_count, again.count) == ("open", 1, 2)
    assert again.opened_at == clock.now
    assert again.resolved_at is None and again.recovery_time_s is None
    assert store.timeline(incident.id)[-1].message == "resolved → open: the error recurred"
    assert record_db_error(store, default_classifier)[1] == "updated"


def test_failures_that_ended_before_the_resolution_arrive_late_and_reopen_nothing(
    store: IncidentStore, default_classifier: Classifier, clock: Clock
) -> None:
    incident, _ = record_db_error(store, default_classifier)
    store.resolve(incident.id, "ana", "fixed")
    resolved_at = clock.now
    clock.now += 600  # a collector's backlog, or a sender's retry, comes in much later
    late = error_record(
        "agent.bma",
        "SimulatedDatabaseError",
        "Database connection timeout after 1 ms",
        attributes={"ers.agent": "BMA"},
    )
    late.end_ns = int((resolved_at - 5) * 1e9)
    after, outcome = store.record_error(late, default_classifier.classify(late))
    # Before: "reopened", as though the error had recurred after the fix.
    assert (outcome, after.status, after.reopen_count, after.count) == ("updated", "resolved", 0, 2)
    assert "arrived late" in store.timeline(incident.id)[-1].message
    late.end_ns = int((resolved_at + 1) * 1e9)  # one that ended after it: a recurrence
    assert store.record_error(late, default_classifier.classify(late))[1] == "reopened"


def test_a_late_failure_moves_last_seen_to_when_it_happened(
    store: IncidentStore, default_classifier: Classifier, clock: Clock
) -> None:
    # It was left at the failure before: since= between the two did not list the incident.
    incident, _ = record_db_error(store, default_classifier)
    first_seen = clock.now
    clock.now += 100
    store.resolve(incident.id, "ana", "fixed")
    clock.now += 600
    late = error_record(
        "agent.bma",
        "SimulatedDatabaseError",
        "Database connection timeout after 1 ms",
        attributes={"ers.agent": "BMA"},
    )
    late.end_ns = int((first_seen + 50) * 1e9)
    after, outcome = store.record_error(late, default_classifier.classify(late))
    assert (outcome, after.status) == ("updated", "resolved")
    assert after.last_seen == first_seen + 50
    listed, total = store.list(since=first_seen + 40)
    assert total == 1 and listed[0].id == incident.id


def test_auto_resolve_waits_for_quiet_and_a_healthy_component(
    new_store: NewStore, default_classifier: Classifier, clock: Clock
) -> None:
    healthy = {"BMA": False, "NPA": True}
    store = new_store(clock=clock, quiet_period_s=60, is_component_healthy=healthy.__getitem__)
    bma, _ = record_db_error(store, default_classifier, "BMA")
    npa, _ = record_db_error(store, default_classifier, "NPA")
    assert store.auto_resolve(clock.now + 59) == []
    resolved = store.auto_resolve(clock.now + 61)
    assert [i.id for i in resolved] == [npa.id]
    assert store.get(bma.id).status == "open"
    healthy["BMA"] = True
    assert [i.id for i in store.auto_resolve(clock.now + 61)] == [bma.id]
    entry = store.timeline(bma.id)[-1]
    assert (entry.actor, entry.kind) == ("auto-resolve", "status_changed")
    assert "no new errors for 61 s and BMA is healthy" in entry.message


def test_list_filters_and_paginates(
    store: IncidentStore, default_classifier: Classifier, clock: Clock
) -> None:
    ids = []
    for index, agent in enumerate(["NPA", "WPA", "BMA", "MCA", "NPA"]):
        clock.now += 1
        name = f"agent.{agent.lower()}"
        message = (
            "Database connection timeout"
            if index % 2 == 0
            else f"Agent processing failure {index}x"
        )
        record = error_record(
            name, "Boom", message + f" kind{'abcde'[index]}", attributes={"ers.agent": agent}
        )
        incident, _ = store.record_error(record, default_classifier.classify(record))
        ids.append(incident.id)
    everything, total = store.list()
    assert total == 5 and [i.id for i in everything] == ids[::-1]  # newest activity first
    page, total = store.list(limit=2, offset=2)
    assert total == 5 and [i.id for i in page] == ids[::-1][2:4]
    high, total = store.list(severity="high")
    assert total == 3 and {i.type for i in high} == {"database"}
    npa, total = store.list(component="NPA")
    assert total == 2
    recent, total = store.list(since=clock.now - 1)
    assert total == 2
    # A page past the end is empty and still says how many there are; nothing matching is 0.
    assert store.list(limit=2, offset=10) == ([], 5)
    assert store.list(component="nobody") == ([], 0)
    store.resolve(ids[0], "ana", "")
    assert store.list(status="active")[1] == 4
    assert store.list(status="resolved")[1] == 1
    assert store.list(status=["open", "resolved"], severity=["high", "low"])[1] == 3
    assert store.active_counts_by_severity() == {"low": 0, "medium": 2, "high": 2, "critical": 0}
    assert store.counts_by_severity(since=0)["high"] == 3


def test_find_active_returns_the_latest_active_incident_of_a_component(
    store: IncidentStore, default_classifier: Classifier
) -> None:
    incident, _ = record_db_error(store, default_classifier, "BMA")
    assert store.find_active("BMA", "database").id == incident.id
    assert store.find_active("BMA").id == incident.id
    assert store.find_active("BMA", "network") is None
    store.resolve(incident.id, "ana", "")
    assert store.find_active("BMA") is None


def test_timeline_is_the_audit_trail(store: IncidentStore, default_classifier: Classifier) -> None:
    incident, _ = record_db_error(store, default_classifier)
    store.add_timeline(
        incident.id, "action_started", "isolating BMA", "responder", {"action": "isolate"}
    )
    store.add_timeline(
        incident.id, "action_finished", "BMA isolated", "responder", {"result": "success"}
    )
    store.add_timeline(incident.id, "alert_received", "ErrorRateHigh firing", "alertmanager", {})
    with pytest.raises(UnknownTimelineKind, match="unknown timeline kind 'gossip'"):
        store.add_timeline(incident.id, "gossip", "", "x", {})
    entries = store.timeline(incident.id)
    assert [e.kind for e in entries] == [
        "classified",
        "action_started",
        "action_finished",
        "alert_received",
    ]
    assert entries[0].message.startswith("classified by rule database: high database")
    assert entries[1].data == {"action": "isolate"}
    assert entries[2].to_dict()["who"] == "responder"


def test_a_new_classification_for_the_same_fingerprint_is_applied_and_noted(
    store: IncidentStore, default_classifier: Classifier
) -> None:
    record = error_record(
        "agent.npa", "Boom", "Agent processing failure", attributes={"ers.agent": "NPA"}
    )
    first = default_classifier.classify(record)
    store.record_error(record, first)
    escalated = type(first)(**{**first.to_dict(), "severity": "critical", "rule": "escalate"})
    incident, _ = store.record_error(record, escalated)
    assert (incident.severity, incident.rule) == ("critical", "escalate")
    assert store.timeline(incident.id)[-1].message.startswith("classified by rule escalate")


def test_error_span_records_are_kept_bounded_for_replay(
    new_store: NewStore, default_classifier: Classifier
) -> None:
    store = new_store(max_span_records=3)
    for n in range(1, 6):
        record_db_error(store, default_classifier, n=n)
    stored = store.stored_span_records()
    assert [item.record.trace_id for item in stored] == [f"{n:032x}" for n in (3, 4, 5)]
    assert stored[0].classification["rule"] == "database"
    assert stored[0].weight == 1
    assert len(store.stored_span_records(limit=1)) == 1


def test_a_large_batch_keeps_a_weighted_sample_per_incident(
    new_store: NewStore, default_classifier: Classifier
) -> None:
    store = new_store(records_per_incident=5)
    records = [
        error_record("agent.npa", "Boom", f"Agent processing failure {n}", trace_id=f"{n:032x}")
        for n in range(100)
    ]
    outcomes = store.record_errors([(r, default_classifier.classify(r)) for r in records])
    assert len(outcomes) == 1 and outcomes[0].incident.count == 100
    stored = store.stored_span_records(incident_id=outcomes[0].incident.id)
    assert [item.weight for item in stored] == [96, 1, 1, 1, 1]
    assert stored[-1].record.trace_id == f"{99:032x}"


def test_the_write_probe_passes_and_leaves_no_row(store: IncidentStore) -> None:
    for _ in range(2):
        store.probe_writable()
    assert store.database.rows("SELECT count(*) AS n FROM write_probe")[0]["n"] == 0


def test_reads_and_writes_from_several_threads(
    store: IncidentStore, default_classifier: Classifier
) -> None:
    errors: list[BaseException] = []

    def write(agent: str) -> None:
        try:
            for n in range(50):
                record_db_error(store, default_classifier, agent, n)
                store.list(limit=5)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(agent,)) for agent in ("NPA", "WPA", "BMA")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(i.count for i in store.list()[0]) == 150


@pytest.fixture
def replicas(new_store: NewStore) -> tuple[IncidentStore, IncidentStore]:
    """Two stores with their own connections on one database, as two ERS replicas (or two
    processes on one SQLite file) have."""
    return new_store(), new_store()


def classified(
    classifier: Classifier, message: str, n: int = 0
) -> tuple[SpanRecord, Classification]:
    record = error_record(
        "agent.bma",
        "SimulatedDatabaseError",
        message,
        attributes={"ers.agent": "BMA"},
        trace_id=f"{n + 1:032x}",
    )
    return record, classifier.classify(record)


def run_together(*jobs: Callable[[], None]) -> None:
    """Start ``jobs`` on their own threads at the same moment; re-raise the first failure."""
    barrier = threading.Barrier(len(jobs))
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            barrier.wait(timeout=10)
            job()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a replica did not finish"
    if errors:
        raise errors[0]


def test_two_replicas_recording_one_fingerprint_make_one_incident_with_the_summed_count(
    replicas: tuple[IncidentStore, IncidentStore], default_classifier: Classifier
) -> None:
    outcomes: list[str] = []

    def replica(store: IncidentStore) -> Callable[[], None]:
        def job() -> None:
            for n in range(RECORDS_PER_REPLICA):
                record, classification = classified(default_classifier, "connection timeout", n)
                outcomes.append(store.record_error(record, classification)[1])

        return job

    run_together(replica(replicas[0]), replica(replicas[1]))
    incidents, total = replicas[0].list()
    assert total == 1
    assert incidents[0].count == 2 * RECORDS_PER_REPLICA
    assert outcomes.count("opened") == 1
    assert outcomes.count("updated") == 2 * RECORDS_PER_REPLICA - 1
    kept = replicas[1].stored_span_records(incident_id=incidents[0].id)
    assert sum(item.weight for item in kept) == 2 * RECORDS_PER_REPLICA


def test_replicas_batching_fingerprints_in_opposite_orders_lose_nothing(
    replicas: tuple[IncidentStore, IncidentStore], default_classifier: Classifier
) -> None:
    """Row locks are taken in one order on every replica, so crossing batches never
    deadlock and every failure is counted."""
    messages = ["Database connection timeout kind-a", "Database connection timeout kind-b"]
    batches = 50

    def replica(store: IncidentStore, order: list[str]) -> Callable[[], None]:
        def job() -> None:
            for _ in range(batches):
                store.record_errors([classified(default_classifier, m) for m in order * 2])

        return job

    run_together(replica(replicas[0], messages), replica(replicas[1], messages[::-1]))
    incidents, total = replicas[0].list()
    assert total == 2
    assert [i.count for i in incidents] == [2 * 2 * batches] * 2


def test_replicas_writing_the_same_requests_in_opposite_orders_count_each_once(
    replicas: tuple[IncidentStore, IncidentStore], default_classifier: Classifier
) -> None:
    """A request's key is locked as it is inserted; two replicas writing the same requests
    at once (resent to the other after a timeout), in opposite orders, take the keys in one
    order too: neither waits on the other in a circle (PostgreSQL would abort one batch as
    a deadlock, a 503), and each request counts once."""
    batches, per_batch = 20, 200

    def request() -> tuple[int | None, list[tuple[SpanRecord, Classification]]]:
        items = [classified(default_classifier, "card declined") for _ in range(2)]
        return sent_key([record for record, _ in items]), items

    sent = [[request() for _ in range(per_batch)] for _ in range(batches)]
    together = threading.Barrier(2)

    def replica(store: IncidentStore, reverse: bool) -> Callable[[], None]:
        def job() -> None:
            for requests in sent:
                together.wait(timeout=30)
                store.record_errors([], requests[::-1] if reverse else requests)

        return job

    run_together(replica(replicas[0], False), replica(replicas[1], True))
    incidents, total = replicas[0].list()
    assert total == 1
    assert incidents[0].count == batches * per_batch * 2


def test_two_replicas_resolving_at_once_resolve_once(
    replicas: tuple[IncidentStore, IncidentStore], default_classifier: Classifier
) -> None:
    incident, _ = replicas[0].record_error(*classified(default_classifier, "timeout"))
    results: list[str] = []

    def replica(store: IncidentStore, who: str) -> Callable[[], None]:
        def job() -> None:
            try:
                store.resolve(incident.id, who, "fixed")
                results.append("resolved")
            except IllegalTransition:
                results.append("refused")

        return job

    run_together(replica(replicas[0], "ana"), replica(replicas[1], "bo"))
    assert sorted(results) == ["refused", "resolved"]
    changes = [e for e in replicas[0].timeline(incident.id) if e.kind == "status_changed"]
    assert len(changes) == 1 and changes[0].message == "open → resolved: fixed"


def test_a_failure_with_nul_characters_is_still_recorded(
    store: IncidentStore, default_classifier: Classifier
) -> None:
    """PostgreSQL text refuses NUL (it stores U+FFFD instead); one odd span from outside
    must not fail its batch."""
    items = [
        classified(default_classifier, "Database connection timeout \x00 odd"),
        classified(default_classifier, "Agent processing failure"),
    ]
    outcomes = store.record_errors(items)
    assert [o.outcome for o in outcomes] == ["opened", "opened"]
    stored = store.get(outcomes[0].incident.id)
    replaced = "\ufffd" if isinstance(store, PgIncidentStore) else "\x00"
    assert stored.message == f"Database connection timeout {replaced} odd"
    with pytest.raises(IncidentNotFound):
        store.get("INC_0_\x00")


def test_a_request_sent_again_counts_once_until_its_key_is_forgotten(
    new_store: NewStore, default_classifier: Classifier, clock: Clock
) -> None:
    """Another service's request of spans, sent again because its answer was lost, counts
    once: on this store or on a second one on the same database (another replica), alone
    or in a batch with others; a request without a key counts each time; keys are
    forgotten after the window."""
    first, second = new_store(clock=clock), new_store(clock=clock)

    def request(count: int) -> list[tuple[SpanRecord, Classification]]:
        records = [error_record(message="card declined") for _ in range(count)]
        return [(r, default_classifier.classify(r)) for r in records]

    def key(items: list[tuple[SpanRecord, Classification]]) -> int | None:
        return sent_key([record for record, _ in items])

    one, two, own = request(3), request(2), request(1)
    (outcome,) = first.record_errors([], [(key(one), one), (None, two)])
    assert outcome.incident.count == 5
    # Again on the other replica, twice in one batch, beside a new one and an own span.
    new = request(1)
    sent = [(key(one), one), (key(new), new), (key(one), one), (None, two)]
    (outcome,) = second.record_errors(own, sent)
    assert outcome.incident.count == 5 + 1 + 1 + 2
    assert second.record_errors([], [(key(one), one), (key(new), new)]) == []
    # A request whose spans all enclosed failures counted before (none left to write) is
    # remembered too: sent again after a restart, when nothing tells the nesting, it
    # counts nothing.
    nested = request(2)
    assert first.record_errors([], [(key(nested), [])]) == []
    assert second.record_errors([], [(key(nested), nested)]) == []
    clock.now += SENT_BATCHES_KEPT_S + 61
    (outcome,) = first.record_errors([], [(key(new), new)])  # forgets first: counted
    (outcome,) = first.record_errors([], [(key(one), one)])
    assert outcome.incident.count == 9 + 1 + 3


def test_a_requests_key_is_its_spans_ids() -> None:
    records = [error_record() for _ in range(3)]
    assert sent_key(records) == sent_key([SpanRecord.from_dict(r.to_dict()) for r in records])
    assert sent_key(records) != sent_key(records[:2])
    assert sent_key(records) != sent_key(records[::-1])
    assert sent_key([]) is None
    assert (
        sent_key([*records, SpanRecord.from_dict({**records[0].to_dict(), "spanId": ""})]) is None
    )


# -- PostgreSQL only ----------------------------------------------------------------------


@pytest.fixture
def pg_incidents_url(pg_url: str) -> str:
    apply_migrations(pg_url, INCIDENT_STATE)
    return pg_url


@pytest.fixture
def pg_replicas(pg_incidents_url: str) -> Iterator[tuple[PgIncidentStore, PgIncidentStore]]:
    """Two replicas' stores, replicas "a" and "b" running: each holds its presence session."""
    first, second = PgIncidentStore(pg_incidents_url), PgIncidentStore(pg_incidents_url)
    sessions = [
        psycopg.connect(pg_incidents_url, application_name=presence_name(name))
        for name in ("a", "b")
    ]
    yield first, second
    for session in sessions:
        session.close()
    first.close()
    second.close()


def test_migrations_are_recorded_and_applied_once(pg_url: str) -> None:
    applied = apply_migrations(pg_url, INCIDENT_STATE)
    alerts = [("alerts", 1), ("alerts", 2), ("alerts", 3), ("alerts", 4)]
    assert applied == [
        (COMPONENT, 1),
        (COMPONENT, 2),
        (COMPONENT, 3),
        (COMPONENT, 4),
        *alerts,
        ("audit", 1),
        ("audit", 2),
    ]
    assert apply_migrations(pg_url, INCIDENT_STATE) == []
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'ers_incidents' ORDER BY 1"
        ).fetchall()
    assert [t[0] for t in tables] == [
        "action_claims",
        "alert_ledger",
        "audit",
        "incidents",
        "sent_batches",
        "span_records",
        "timeline",
        "write_probe",
    ]


def test_a_database_without_the_migrations_is_refused_with_the_next_step(pg_url: str) -> None:
    with pytest.raises(IncidentStoreUnavailable, match="run the PostgreSQL migrations"):
        PgIncidentStore(pg_url)


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(
        parts._replace(netloc=f"{parts.username}:{password}@{parts.hostname}:{parts.port}")
    )


def test_failures_name_the_server_but_never_the_password(pg_incidents_url: str) -> None:
    wrong = "not-the-password-s3cr3t"
    with pytest.raises(IncidentStoreUnavailable) as refused:
        PgIncidentStore(with_password(pg_incidents_url, wrong))
    message = str(refused.value)
    assert wrong not in message and "***" not in message
    assert f"{urlsplit(pg_incidents_url).hostname}:{urlsplit(pg_incidents_url).port}" in message
    assert "password authentication failed" in message
    real = urlsplit(pg_incidents_url).password
    assert real and real not in message


def test_a_read_only_server_fails_the_write_probe_naming_it(pg_incidents_url: str) -> None:
    # What a replica meets after a failover to a standby: reads work, writes are refused.
    with psycopg.connect(pg_incidents_url, autocommit=True) as conn:
        database = conn.execute("SELECT current_database()").fetchone()[0]
        conn.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    store = PgIncidentStore(pg_incidents_url)
    try:
        assert store.list() == ([], 0)
        with pytest.raises(IncidentStoreUnavailable, match="read-only transaction"):
            store.probe_writable()
    finally:
        store.close()


def test_a_closed_store_raises_unavailable(pg_incidents_url: str) -> None:
    store = PgIncidentStore(pg_incidents_url)
    store.close()
    with pytest.raises(IncidentStoreUnavailable, match="closed"):
        store.list()


def test_a_replica_survives_a_server_restart(
    default_classifier: Classifier, own_server: PostgresServer
) -> None:
    """While the server is down calls fail fast with a reason; once it is back the same
    store works again without being rebuilt."""
    url = own_server.create_database()
    apply_migrations(url, INCIDENT_STATE)
    store = PgIncidentStore(url)
    try:
        store.record_error(*classified(default_classifier, "timeout"))
        own_server.halt()
        reasons = []
        for _ in range(3):
            with pytest.raises(IncidentStoreUnavailable) as down:
                store.list()
            assert own_server.password not in str(down.value)
            reasons.append(str(down.value))
        # Once a wait for a connection ran out, the next calls wait only 0.5 s for one:
        # before, each waited the pool's whole 3 s (an incident page, an alert delivery).
        assert "no PostgreSQL connection within 3 s" in " ".join(reasons), reasons
        assert "no PostgreSQL connection within 0.5 s" in reasons[-1], reasons
        own_server.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                assert store.list()[1] == 1
                break
            except IncidentStoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        incident, outcome = store.record_error(*classified(default_classifier, "timeout"))
        assert (outcome, incident.count) == ("updated", 2)
    finally:
        store.close()


def test_one_replica_claims_an_incidents_fleet_wide_action_until_the_cooldown_ends(
    pg_replicas: tuple[PgIncidentStore, PgIncidentStore],
) -> None:
    a, b = pg_replicas
    outcomes: dict[str, str | None] = {}
    run_together(
        lambda: outcomes.__setitem__("a", a.claim_action("INC_1", "emergency_backup", "a", 300)),
        lambda: outcomes.__setitem__("b", b.claim_action("INC_1", "emergency_backup", "b", 300)),
    )
    winners = [name for name, holder in outcomes.items() if holder is None]
    assert len(winners) == 1
    (loser,) = {"a", "b"} - set(winners)
    assert outcomes[loser] == winners[0]
    # Another action or another incident is a claim of its own.
    assert b.claim_action("INC_1", "rollback", "b", 300) is None
    assert b.claim_action("INC_2", "emergency_backup", "b", 300) is None
    # Once the cooldown is over, the action may run again, on any replica.
    time.sleep(0.05)
    assert b.claim_action("INC_1", "emergency_backup", "b", 0.01) is None
    assert a.claim_action("INC_1", "emergency_backup", "a", 300) == "b"


def test_a_claim_given_back_after_its_action_failed_may_be_taken_by_any_replica(
    pg_replicas: tuple[PgIncidentStore, PgIncidentStore],
) -> None:
    a, b = pg_replicas
    assert a.claim_action("INC_1", "emergency_backup", "a", 300) is None
    # Only the holder gives a claim back: another replica's word leaves it in place.
    b.release_action("INC_1", "emergency_backup", "b")
    assert b.claim_action("INC_1", "emergency_backup", "b", 300) == "a"
    a.release_action("INC_1", "emergency_backup", "a")
    assert b.claim_action("INC_1", "emergency_backup", "b", 300) is None


def test_the_claim_of_a_replica_that_is_gone_is_taken_over_by_one_replica(
    pg_replicas: tuple[PgIncidentStore, PgIncidentStore],
) -> None:
    """A replica killed in the middle of an action never finishes it: its claim does not
    hold the action back from the running replicas for the rest of the cooldown."""
    a, b = pg_replicas
    assert a.claim_action("INC_1", "emergency_backup", "gone:4242", 300) is None
    outcomes: dict[str, str | None] = {}
    run_together(
        lambda: outcomes.__setitem__("a", a.claim_action("INC_1", "emergency_backup", "a", 300)),
        lambda: outcomes.__setitem__("b", b.claim_action("INC_1", "emergency_backup", "b", 300)),
    )
    winners = [name for name, holder in outcomes.items() if holder is None]
    assert len(winners) == 1, outcomes
    (loser,) = {"a", "b"} - set(winners)
    assert outcomes[loser] == winners[0]


def test_a_statement_stuck_behind_a_lock_is_cancelled_with_the_reason(
    pg_incidents_url: str,
) -> None:
    """The pool's connections carry a statement timeout: a query waiting on another
    session's lock fails with a reason instead of holding the worker's thread for ever."""
    pool = PgPool(
        pg_incidents_url,
        name="ers-incidents-test",
        unavailable=IncidentStoreUnavailable,
        schema="ers_incidents",
        statement_timeout_s=0.3,
    )
    store = IncidentStore(pool)
    try:
        with psycopg.connect(pg_incidents_url) as holder:
            holder.execute("LOCK TABLE ers_incidents.incidents IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(IncidentStoreUnavailable, match="ran longer than 0.3 s"):
                store.list(status="active")
        # The lock is gone with its session: the same pool answers again.
        assert store.list(status="active") == ([], 0)
    finally:
        store.close()
