"""What only the PostgreSQL incident store does: several replicas (each its own store and
connection pool) share one set of incidents without lost updates, its schema comes from
versioned migrations, and its failures name the server but never the password."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from telemetry.classifier import Classification, Classifier
from telemetry.incident_model import (
    IllegalTransition,
    IncidentNotFound,
    IncidentStoreUnavailable,
)
from telemetry.incident_pg import COMPONENT, MIGRATIONS, PgIncidentStore
from telemetry.span_record import SpanRecord
from tests.pg import NOT_INSTALLED, apply_migrations, find_bin_dir, start_cluster
from tests.telemetry.conftest import error_record

RECORDS_PER_REPLICA = 200


@pytest.fixture
def url(pg_url: str) -> str:
    apply_migrations(pg_url, {COMPONENT: MIGRATIONS})
    return pg_url


@pytest.fixture
def replicas(url: str) -> Iterator[tuple[PgIncidentStore, PgIncidentStore]]:
    """Two stores with their own pools on one database, as two ERS replicas have."""
    first, second = PgIncidentStore(url), PgIncidentStore(url)
    yield first, second
    first.close()
    second.close()


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
    replicas: tuple[PgIncidentStore, PgIncidentStore], default_classifier: Classifier
) -> None:
    outcomes: list[str] = []

    def replica(store: PgIncidentStore) -> Callable[[], None]:
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
    replicas: tuple[PgIncidentStore, PgIncidentStore], default_classifier: Classifier
) -> None:
    """Row locks are taken in one order on every replica, so crossing batches never
    deadlock and every failure is counted."""
    messages = ["Database connection timeout kind-a", "Database connection timeout kind-b"]
    batches = 50

    def replica(store: PgIncidentStore, order: list[str]) -> Callable[[], None]:
        def job() -> None:
            for _ in range(batches):
                store.record_errors([classified(default_classifier, m) for m in order * 2])

        return job

    run_together(replica(replicas[0], messages), replica(replicas[1], messages[::-1]))
    incidents, total = replicas[0].list()
    assert total == 2
    assert [i.count for i in incidents] == [2 * 2 * batches] * 2


def test_two_replicas_resolving_at_once_resolve_once(
    replicas: tuple[PgIncidentStore, PgIncidentStore], default_classifier: Classifier
) -> None:
    incident, _ = replicas[0].record_error(*classified(default_classifier, "timeout"))
    results: list[str] = []

    def replica(store: PgIncidentStore, who: str) -> Callable[[], None]:
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


def test_migrations_are_recorded_and_applied_once(pg_url: str) -> None:
    applied = apply_migrations(pg_url, {COMPONENT: MIGRATIONS})
    assert applied == [(COMPONENT, 1), (COMPONENT, 2)]
    assert apply_migrations(pg_url, {COMPONENT: MIGRATIONS}) == []
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'ers_incidents' ORDER BY 1"
        ).fetchall()
    assert [t[0] for t in tables] == ["action_claims", "incidents", "span_records", "timeline"]


def test_a_database_without_the_migrations_is_refused_with_the_next_step(pg_url: str) -> None:
    with pytest.raises(IncidentStoreUnavailable, match="run the PostgreSQL migrations"):
        PgIncidentStore(pg_url)


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(
        parts._replace(netloc=f"{parts.username}:{password}@{parts.hostname}:{parts.port}")
    )


def test_failures_name_the_server_but_never_the_password(url: str) -> None:
    wrong = "not-the-password-s3cr3t"
    with pytest.raises(IncidentStoreUnavailable) as refused:
        PgIncidentStore(with_password(url, wrong))
    message = str(refused.value)
    assert wrong not in message and "***" not in message
    assert f"{urlsplit(url).hostname}:{urlsplit(url).port}" in message
    assert "password authentication failed" in message
    real = urlsplit(url).password
    assert real and real not in message


def test_a_closed_store_raises_unavailable(url: str) -> None:
    store = PgIncidentStore(url)
    store.close()
    with pytest.raises(IncidentStoreUnavailable, match="closed"):
        store.list()


def test_a_failure_with_nul_characters_is_still_recorded(
    replicas: tuple[PgIncidentStore, PgIncidentStore], default_classifier: Classifier
) -> None:
    """PostgreSQL text refuses NUL; one odd span from outside must not fail its batch."""
    items = [
        classified(default_classifier, "Database connection timeout \x00 odd"),
        classified(default_classifier, "Agent processing failure"),
    ]
    outcomes = replicas[0].record_errors(items)
    assert [o.outcome for o in outcomes] == ["opened", "opened"]
    stored = replicas[0].get(outcomes[0].incident.id)
    assert stored.message == "Database connection timeout \ufffd odd"
    with pytest.raises(IncidentNotFound):
        replicas[0].get("INC_0_\x00")


def test_a_replica_survives_a_server_restart(default_classifier: Classifier) -> None:
    """While the server is down calls fail fast with a reason; once it is back the same
    store works again without being rebuilt."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.fail(NOT_INSTALLED, pytrace=False)
    server = start_cluster(bin_dir)
    try:
        url = server.create_database()
        apply_migrations(url, {COMPONENT: MIGRATIONS})
        store = PgIncidentStore(url)
        try:
            store.record_error(*classified(default_classifier, "timeout"))
            server.halt()
            with pytest.raises(IncidentStoreUnavailable) as down:
                store.list()
            assert server.password not in str(down.value)
            server.start()
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
    finally:
        server.stop()


def test_one_replica_claims_an_incidents_fleet_wide_action_until_the_cooldown_ends(
    replicas: tuple[PgIncidentStore, PgIncidentStore],
) -> None:
    a, b = replicas
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
