"""The circuit breaker: transitions, trip rules, backoff, operator actions, events, snapshot."""

from __future__ import annotations

import contextlib
import json
import logging
import re

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.errors import DependencyError, UserInputError
from service.resilience.breaker import (
    BreakerConfig,
    BreakerEvent,
    BreakerEventKind,
    BreakerState,
    CallNotPermitted,
    CircuitBreaker,
    ProbeOutcome,
    ResetRefused,
)

# 2023-11-14T22:13:20Z, so wall-clock timestamps in snapshots are predictable.
WALL_EPOCH = 1_700_000_000.0


class ManualClock:
    """Monotonic time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL_EPOCH + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def make_breaker(clock: ManualClock, name: str = "budget", **config: object) -> CircuitBreaker:
    return CircuitBreaker(
        name, BreakerConfig(**config), clock=clock, wall_clock=clock.wall, span_events=False
    )


def attempt(breaker: CircuitBreaker, outcome: str = "ok") -> bool:
    """Make one call with the given outcome; False when the breaker rejected it."""
    try:
        permit = breaker.acquire()
    except CallNotPermitted:
        return False
    if outcome == "ok":
        permit.record_success(0.01)
    elif outcome == "slow":
        permit.record_success(breaker.config.slow_call_duration_s)
    elif outcome == "fail":
        permit.record_failure(TimeoutError("upstream timed out"), 0.01)
    elif outcome == "ignored":
        permit.record_failure(UserInputError("not a number"), 0.01)
    else:
        raise ValueError(outcome)
    return True


def run_steps(breaker: CircuitBreaker, clock: ManualClock, steps: str) -> None:
    """Run space-separated steps: ok, slow, fail, fail*N, wait=S, force, force=TTL,
    release, reset, reset!, disable, enable, try (an acquire that may be rejected)."""
    for step in steps.split():
        verb, _, argument = step.partition("=")
        if "*" in verb:
            verb, _, times = verb.partition("*")
            for _ in range(int(times)):
                attempt(breaker, verb)
        elif verb in ("ok", "slow", "fail", "ignored"):
            attempt(breaker, verb)
        elif verb == "wait":
            clock.advance(float(argument))
        elif verb == "force":
            breaker.force_open("deploy freeze", "operator", float(argument) if argument else None)
        elif verb == "release":
            breaker.release()
        elif verb == "reset":
            breaker.reset()
        elif verb == "reset!":
            breaker.reset(force=True)
        elif verb == "disable":
            breaker.disable()
        elif verb == "enable":
            breaker.enable()
        elif verb == "try":
            with contextlib.suppress(CallNotPermitted):
                breaker.acquire().release()
        else:
            raise ValueError(step)


# Config for the table: 3 consecutive failures trip, open for 10 s, user errors ignored.
TABLE_CONFIG = {
    "failure_threshold": 3,
    "open_duration_s": 10.0,
    "ignore_exceptions": (UserInputError,),
}

TRANSITIONS = [
    ("closed stays closed below the threshold", "fail*2", "closed"),
    ("consecutive failures trip closed to open", "fail*3", "open"),
    ("a success resets the consecutive count", "fail*2 ok fail*2", "closed"),
    ("open rejects before the open duration", "fail*3 wait=9.9 try", "open"),
    ("open becomes half-open at acquire after it", "fail*3 wait=10 try", "half_open"),
    ("open stays open without an acquire", "fail*3 wait=60", "open"),
    ("a successful trial closes half-open", "fail*3 wait=10 ok", "closed"),
    ("a failed trial reopens half-open", "fail*3 wait=10 fail", "open"),
    ("a slow trial reopens half-open", "fail*3 wait=10 slow", "open"),
    ("an ignored trial leaves it half-open", "fail*3 wait=10 ignored", "half_open"),
    ("closed can be forced open", "force", "forced_open"),
    ("open can be forced open", "fail*3 force", "forced_open"),
    ("half-open can be forced open", "fail*3 wait=10 try force", "forced_open"),
    ("disabled can be forced open", "disable force", "forced_open"),
    ("forced open ignores its open duration", "force wait=1000 try", "forced_open"),
    ("forced open with a TTL rejects before it", "force=5 wait=4.9 try", "forced_open"),
    ("forced open TTL expiry goes half-open", "force=5 wait=5 try", "half_open"),
    ("forced open TTL expiry never closes", "force=5 wait=500", "forced_open"),
    ("release moves forced open to half-open", "force release", "half_open"),
    ("release of a closed breaker changes nothing", "release", "closed"),
    ("reset closes an open breaker with force", "fail*3 reset!", "closed"),
    ("reset closes an open breaker once failures are old", "fail*3 wait=10 reset", "closed"),
    ("reset closes a half-open breaker", "fail*3 wait=10 try reset", "closed"),
    ("reset closes a forced-open breaker without failures", "force reset", "closed"),
    ("any breaker can be disabled", "fail*3 disable", "disabled"),
    ("disabled records nothing", "disable fail*50", "disabled"),
    ("enable closes a disabled breaker", "fail*3 disable enable", "closed"),
    ("enable of a closed breaker changes nothing", "enable", "closed"),
]


@pytest.mark.parametrize(
    ("steps", "expected"), [row[1:] for row in TRANSITIONS], ids=[row[0] for row in TRANSITIONS]
)
def test_transition_table(clock: ManualClock, steps: str, expected: str) -> None:
    breaker = make_breaker(clock, **TABLE_CONFIG)
    run_steps(breaker, clock, steps)
    assert breaker.state == BreakerState(expected)


def test_states_are_lowercase_strings() -> None:
    assert [s.value for s in BreakerState] == [
        "closed",
        "open",
        "half_open",
        "forced_open",
        "disabled",
    ]


def test_rejection_names_breaker_state_and_retry_after(clock: ManualClock) -> None:
    breaker = make_breaker(clock, **TABLE_CONFIG)
    run_steps(breaker, clock, "fail*3 wait=4")
    with pytest.raises(CallNotPermitted) as rejected:
        breaker.acquire()
    assert rejected.value.breaker == "budget"
    assert rejected.value.state is BreakerState.OPEN
    assert rejected.value.retry_after_s == pytest.approx(6.0)
    assert "breaker 'budget' is open (3 consecutive failures" in str(rejected.value)
    assert breaker.snapshot()["rejectedCalls"] == 1


def open_duration_after_trip(breaker: CircuitBreaker) -> float:
    with pytest.raises(CallNotPermitted) as rejected:
        breaker.acquire()
    assert rejected.value.retry_after_s is not None
    return rejected.value.retry_after_s


def test_open_duration_grows_is_capped_and_resets_after_a_clean_close(clock: ManualClock) -> None:
    breaker = make_breaker(
        clock,
        failure_threshold=1,
        open_duration_s=10.0,
        open_backoff_multiplier=2.0,
        max_open_duration_s=35.0,
    )
    attempt(breaker, "fail")
    durations = [open_duration_after_trip(breaker)]
    for _ in range(3):
        clock.advance(durations[-1])
        assert attempt(breaker, "fail")  # the half-open trial fails
        durations.append(open_duration_after_trip(breaker))
    assert durations == [10.0, 20.0, 35.0, 35.0]
    assert breaker.snapshot()["openDurationS"] == 35.0

    clock.advance(35.0)
    assert attempt(breaker, "ok")
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["openDurationS"] == 10.0
    attempt(breaker, "fail")
    assert open_duration_after_trip(breaker) == 10.0


def test_reset_clears_the_backoff(clock: ManualClock) -> None:
    breaker = make_breaker(clock, failure_threshold=1, open_duration_s=10.0)
    run_steps(breaker, clock, "fail wait=10 fail")
    assert open_duration_after_trip(breaker) == 20.0
    breaker.reset(force=True)
    attempt(breaker, "fail")
    assert open_duration_after_trip(breaker) == 10.0


def test_slow_calls_trip_when_the_whole_window_is_slow(clock: ManualClock) -> None:
    breaker = make_breaker(clock, sliding_window_size=4, minimum_calls=4, slow_call_duration_s=2.0)
    run_steps(breaker, clock, "slow*3 ok slow*3")
    assert breaker.state is BreakerState.CLOSED  # the fast call is still in the window
    assert breaker.snapshot()["slowCallRate"] == 0.75
    attempt(breaker, "slow")
    assert breaker.state is BreakerState.OPEN
    assert "slow-call rate 100%" in breaker.history()[-1].reason
    assert breaker.snapshot()["failureCount"] == 0


def test_slow_call_boundary_is_inclusive(clock: ManualClock) -> None:
    breaker = make_breaker(clock, sliding_window_size=2, minimum_calls=2, slow_call_duration_s=1.0)
    breaker.acquire().record_success(0.999)
    breaker.acquire().record_success(1.0)
    assert breaker.snapshot()["slowCallRate"] == 0.5
    breaker.acquire().record_success(1.0)
    assert breaker.state is BreakerState.OPEN


def test_slow_call_rate_threshold_below_one(clock: ManualClock) -> None:
    breaker = make_breaker(
        clock, sliding_window_size=4, minimum_calls=4, slow_call_rate_threshold=0.5
    )
    run_steps(breaker, clock, "ok ok slow")
    assert breaker.state is BreakerState.CLOSED  # below minimum_calls
    attempt(breaker, "slow")
    assert breaker.state is BreakerState.OPEN


def test_failure_rate_trips_only_once_minimum_calls_are_in(clock: ManualClock) -> None:
    breaker = make_breaker(clock, failure_threshold=100, sliding_window_size=10, minimum_calls=10)
    run_steps(breaker, clock, "fail ok fail ok fail ok fail ok fail")
    snapshot = breaker.snapshot()
    assert breaker.state is BreakerState.CLOSED
    assert snapshot["failureRate"] is None and snapshot["bufferedCalls"] == 9
    # The tenth call is a success, yet it completes a window with 5 of 10 failed.
    attempt(breaker, "ok")
    assert breaker.state is BreakerState.OPEN
    assert breaker.snapshot()["failureRate"] == 0.5
    assert "failure rate 50% over the last 10 calls" in breaker.history()[-1].reason


def test_failure_rate_below_threshold_stays_closed(clock: ManualClock) -> None:
    breaker = make_breaker(clock, failure_threshold=100, sliding_window_size=10, minimum_calls=10)
    run_steps(breaker, clock, "fail*4 ok*6 ok*30 fail*4")
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["failureRate"] == 0.4
    assert breaker.snapshot()["bufferedCalls"] == 10


def test_old_failures_slide_out_of_the_window(clock: ManualClock) -> None:
    breaker = make_breaker(clock, failure_threshold=100, sliding_window_size=4, minimum_calls=4)
    run_steps(breaker, clock, "fail ok ok ok ok")
    assert breaker.snapshot()["failureRate"] == 0.0


def test_a_window_of_only_successes_still_counts_what_comes_next(clock: ManualClock) -> None:
    breaker = make_breaker(
        clock,
        failure_threshold=100,
        sliding_window_size=4,
        minimum_calls=4,
        failure_rate_threshold=0.5,
        slow_call_rate_threshold=1.0,
    )
    run_steps(breaker, clock, "ok*12 fail")
    assert breaker.snapshot()["failureRate"] == 0.25
    run_steps(breaker, clock, "ok*3")
    assert breaker.snapshot()["failureRate"] == 0.25  # the failure is still in the window
    run_steps(breaker, clock, "ok slow")
    snapshot = breaker.snapshot()
    assert (snapshot["failureRate"], snapshot["slowCallRate"]) == (0.0, 0.25)
    run_steps(breaker, clock, "ok*4 fail")
    assert breaker.state is BreakerState.CLOSED
    run_steps(breaker, clock, "fail")
    assert breaker.state is BreakerState.OPEN
    assert "failure rate 50% over the last 4 calls" in breaker.history()[-1].reason


def test_ignored_exceptions_never_count(clock: ManualClock) -> None:
    breaker = make_breaker(clock, failure_threshold=1, ignore_exceptions=(UserInputError,))
    for _ in range(50):
        breaker.acquire().record_failure(UserInputError("amount must be a number"))
    snapshot = breaker.snapshot()
    assert breaker.state is BreakerState.CLOSED
    assert snapshot["failureCount"] == 0 and snapshot["bufferedCalls"] == 0
    assert snapshot["lastError"] is None


def test_errors_outside_record_exceptions_never_count(clock: ManualClock) -> None:
    breaker = make_breaker(clock, failure_threshold=1, record_exceptions=(DependencyError,))
    breaker.acquire().record_failure(ValueError("a bug, not an outage"))
    assert breaker.state is BreakerState.CLOSED
    breaker.acquire().record_failure(DependencyError("database down"))
    assert breaker.state is BreakerState.OPEN


def test_ignore_exceptions_win_over_record_exceptions(clock: ManualClock) -> None:
    class QuotaExceeded(DependencyError):
        pass

    breaker = make_breaker(
        clock,
        failure_threshold=1,
        record_exceptions=(DependencyError,),
        ignore_exceptions=(QuotaExceeded,),
    )
    breaker.acquire().record_failure(QuotaExceeded("user over quota"))
    assert breaker.state is BreakerState.CLOSED


def test_an_ignored_trial_frees_its_slot(clock: ManualClock) -> None:
    breaker = make_breaker(clock, failure_threshold=1, ignore_exceptions=(UserInputError,))
    run_steps(breaker, clock, "fail wait=30")
    breaker.acquire().record_failure(UserInputError("bad input"))
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.snapshot()["halfOpenInFlight"] == 0
    assert attempt(breaker, "ok")
    assert breaker.state is BreakerState.CLOSED


def test_half_open_needs_the_configured_number_of_successes(clock: ManualClock) -> None:
    breaker = make_breaker(clock, failure_threshold=1, half_open_success_threshold=3)
    run_steps(breaker, clock, "fail wait=30 ok ok")
    assert breaker.state is BreakerState.HALF_OPEN
    attempt(breaker, "ok")
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["failureCount"] == 0


def test_a_permit_reports_once(clock: ManualClock) -> None:
    breaker = make_breaker(clock, failure_threshold=2)
    permit = breaker.acquire()
    permit.record_failure(TimeoutError())
    permit.record_failure(TimeoutError())
    permit.record_success()
    permit.release()
    assert breaker.snapshot()["failureCount"] == 1
    assert breaker.snapshot()["bufferedCalls"] == 1


def test_permits_from_before_a_transition_report_nothing(clock: ManualClock) -> None:
    breaker = make_breaker(clock, failure_threshold=1)
    early = breaker.acquire()
    attempt(breaker, "fail")
    clock.advance(30)
    trial = breaker.acquire()
    early.record_success()  # taken while closed: must not close the half-open breaker
    assert breaker.state is BreakerState.HALF_OPEN
    trial.record_success()
    assert breaker.state is BreakerState.CLOSED


def test_forced_open_with_ttl_expires_to_half_open_then_a_trial_decides(
    clock: ManualClock,
) -> None:
    breaker = make_breaker(clock)
    message = breaker.force_open("error budget burn", "alertmanager", ttl_s=60)
    assert message == (
        "breaker 'budget' is forced open by alertmanager for 60 s: error budget burn"
    )
    snapshot = breaker.snapshot()
    assert snapshot["forced"] == {
        "reason": "error budget burn",
        "source": "alertmanager",
        "expiresAt": "2023-11-14T22:14:20.000Z",
    }
    assert snapshot["openedAt"] == "2023-11-14T22:13:20.000Z"
    clock.advance(45)
    with pytest.raises(CallNotPermitted) as rejected:
        breaker.acquire()
    assert rejected.value.retry_after_s == pytest.approx(15)
    assert "forced open by alertmanager (error budget burn)" in str(rejected.value)

    clock.advance(15)
    trial = breaker.acquire()
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.snapshot()["forced"] is None
    trial.record_success(0.1)
    assert breaker.state is BreakerState.CLOSED
    transitions = [(e.from_state.value, e.to_state.value) for e in breaker.history()]
    assert transitions == [
        ("closed", "forced_open"),
        ("forced_open", "half_open"),
        ("half_open", "closed"),
    ]


def test_forced_open_without_ttl_has_no_retry_after(clock: ManualClock) -> None:
    breaker = make_breaker(clock)
    breaker.force_open("investigating", "oncall")
    with pytest.raises(CallNotPermitted) as rejected:
        breaker.acquire()
    assert rejected.value.retry_after_s is None
    assert rejected.value.state is BreakerState.FORCED_OPEN
    assert "until it is released" in str(rejected.value)


def test_forcing_again_renews_reason_and_expiry(clock: ManualClock) -> None:
    breaker = make_breaker(clock)
    breaker.force_open("first alert", "alertmanager", ttl_s=10)
    clock.advance(8)
    breaker.force_open("alert still firing", "alertmanager", ttl_s=10)
    clock.advance(8)
    run_steps(breaker, clock, "try")
    assert breaker.state is BreakerState.FORCED_OPEN
    assert breaker.snapshot()["forced"]["reason"] == "alert still firing"
    assert [e.kind for e in breaker.history()] == [
        BreakerEventKind.STATE_TRANSITION,
        BreakerEventKind.FORCE_RENEWED,
    ]


@pytest.mark.parametrize(("reason", "source", "ttl_s"), [("", "x", None), ("r", "x", 0)])
def test_force_open_rejects_bad_arguments(
    clock: ManualClock, reason: str, source: str, ttl_s: float | None
) -> None:
    with pytest.raises(ValueError):
        make_breaker(clock).force_open(reason, source, ttl_s)


def test_release_explains_when_there_is_nothing_to_release(clock: ManualClock) -> None:
    breaker = make_breaker(clock)
    assert breaker.release() == "breaker 'budget' is closed, not forced open; nothing to release"
    assert breaker.history() == []
    breaker.force_open("drill", "operator")
    assert breaker.release(source="operator") == "breaker 'budget' was released and is half-open"
    assert breaker.history()[-1].source == "operator"


def test_reset_is_refused_while_the_last_failure_is_recent(clock: ManualClock) -> None:
    breaker = make_breaker(clock, failure_threshold=1)
    attempt(breaker, "fail")
    clock.advance(3.2)
    with pytest.raises(ResetRefused) as refused:
        breaker.reset()
    assert str(refused.value) == (
        "breaker 'budget' is open and its last failure was 3.2 s ago "
        "(TimeoutError: upstream timed out); wait for the half-open trial or reset with force"
    )
    assert breaker.state is BreakerState.OPEN


def test_reset_is_refused_while_the_health_probe_fails(clock: ManualClock) -> None:
    breaker = make_breaker(clock, failure_threshold=1)
    attempt(breaker, "fail")
    clock.advance(3600)  # the failure is old, but the probe says the cause is still there
    with pytest.raises(ResetRefused, match=r"health probe still fails \(DependencyError: down\)"):
        breaker.reset(probe=ProbeOutcome("DependencyError: down"))
    assert breaker.state is BreakerState.OPEN


def test_reset_closes_a_breaker_whose_probe_passes_now_however_recent_the_failure(
    clock: ManualClock,
) -> None:
    breaker = make_breaker(clock, failure_threshold=1)
    attempt(breaker, "fail")
    clock.advance(0.5)  # well within the open duration: only the probe can tell
    message = breaker.reset(probe=ProbeOutcome(), source="cli")
    assert message == "breaker 'budget' was open and is now closed with cleared counters"
    assert breaker.state is BreakerState.CLOSED
    assert breaker.history()[-1].reason == "reset" and breaker.history()[-1].source == "cli"


def test_reset_of_a_forced_open_breaker_with_recent_failures_is_refused(
    clock: ManualClock,
) -> None:
    breaker = make_breaker(clock, failure_threshold=1)
    attempt(breaker, "fail")
    breaker.force_open("incident 42", "responder")
    with pytest.raises(ResetRefused, match="is forced open .* release it for a trial"):
        breaker.reset()


@pytest.mark.parametrize(
    ("steps", "words"), [("force=60", "forced open"), ("force release", "half-open")]
)
def test_reset_says_the_state_it_ended_in_words(clock: ManualClock, steps: str, words: str) -> None:
    breaker = make_breaker(clock, failure_threshold=3)
    run_steps(breaker, clock, steps)
    message = breaker.reset(force=True, source="cli")
    assert message == f"breaker 'budget' was {words} and is now closed with cleared counters"


def test_enable_and_release_of_a_breaker_in_another_state_say_it_in_words(
    clock: ManualClock,
) -> None:
    breaker = make_breaker(clock)
    breaker.force_open("deploy freeze", "operator")
    expected = "breaker 'budget' is forced open, not disabled; nothing to enable"
    assert breaker.enable() == expected
    breaker.release()
    expected = "breaker 'budget' is half-open, not forced open; nothing to release"
    assert breaker.release() == expected


def test_reset_with_force_always_closes_and_clears_counters(clock: ManualClock) -> None:
    breaker = make_breaker(clock, failure_threshold=3)
    run_steps(breaker, clock, "fail*3")
    message = breaker.reset(force=True, probe=ProbeOutcome("DependencyError: down"), source="cli")
    assert message == "breaker 'budget' was open and is now closed with cleared counters"
    snapshot = breaker.snapshot()
    assert breaker.state is BreakerState.CLOSED
    assert snapshot["failureCount"] == 0 and snapshot["bufferedCalls"] == 0
    assert snapshot["openedAt"] is None and snapshot["lastError"] is None
    assert breaker.history()[-1].reason == "reset with force"
    assert breaker.history()[-1].source == "cli"


def test_reset_of_a_closed_breaker_clears_counters_and_is_recorded(clock: ManualClock) -> None:
    breaker = make_breaker(clock, failure_threshold=3)
    run_steps(breaker, clock, "fail*2")
    breaker.reset()
    assert breaker.snapshot()["failureCount"] == 0
    run_steps(breaker, clock, "fail*2")
    assert breaker.state is BreakerState.CLOSED
    assert breaker.history()[-1].kind is BreakerEventKind.RESET


def test_disabled_permits_everything_and_records_nothing(clock: ManualClock) -> None:
    breaker = make_breaker(clock, failure_threshold=1)
    attempt(breaker, "ok")
    assert breaker.disable() == "breaker 'budget' is disabled: every call is let through"
    assert all(attempt(breaker, "fail") for _ in range(20))
    snapshot = breaker.snapshot()
    assert snapshot["failureCount"] == 0 and snapshot["bufferedCalls"] == 1
    assert snapshot["rejectedCalls"] == 0
    assert breaker.enable() == "breaker 'budget' is enabled and closed"
    assert breaker.snapshot()["bufferedCalls"] == 0


def test_history_is_bounded_and_keeps_the_newest(clock: ManualClock) -> None:
    breaker = make_breaker(clock, history_size=4)
    for _ in range(5):
        breaker.disable()
        breaker.enable()
    history = breaker.history()
    assert len(history) == 4
    assert [e.to_state.value for e in history] == ["disabled", "closed"] * 2
    assert history[-1].at == WALL_EPOCH


def test_listeners_get_every_kind_of_event_and_can_unsubscribe(clock: ManualClock) -> None:
    breaker = make_breaker(clock, failure_threshold=1)
    events: list[BreakerEvent] = []
    unsubscribe = breaker.subscribe(events.append)
    transitions: list[BreakerEvent] = []
    breaker.subscribe(transitions.append, [BreakerEventKind.STATE_TRANSITION])
    run_steps(breaker, clock, "fail try")
    assert [e.kind for e in events] == [
        BreakerEventKind.ERROR_RECORDED,
        BreakerEventKind.STATE_TRANSITION,
        BreakerEventKind.CALL_NOT_PERMITTED,
    ]
    assert events[0].reason == "TimeoutError: upstream timed out"
    assert [e.kind for e in transitions] == [BreakerEventKind.STATE_TRANSITION]
    unsubscribe()
    unsubscribe()
    run_steps(breaker, clock, "try")
    assert len(events) == 3
    assert events[1].to_dict() == {
        "kind": "state_transition",
        "breaker": "budget",
        "from": "closed",
        "to": "open",
        "at": "2023-11-14T22:13:20.000Z",
        "reason": "1 consecutive failures, last: TimeoutError: upstream timed out",
        "source": None,
    }


def test_a_failing_listener_never_breaks_the_breaker_and_is_logged_once(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = make_breaker(clock, failure_threshold=1)

    def broken(event: BreakerEvent) -> None:
        raise RuntimeError("metrics backend down")

    received: list[BreakerEvent] = []
    breaker.subscribe(broken)
    breaker.subscribe(received.append)
    with caplog.at_level(logging.ERROR):
        run_steps(breaker, clock, "fail try wait=30 ok fail")
    assert breaker.state is BreakerState.OPEN
    # error, open, rejected, half-open, closed, error, open
    assert len(received) == 7
    failures = [r for r in caplog.records if "breaker listener" in r.getMessage()]
    assert len(failures) == 1
    assert "later failures of this listener are not logged" in failures[0].getMessage()


def test_transitions_become_span_events_on_the_current_span(clock: ManualClock) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    breaker = CircuitBreaker(
        "budget",
        BreakerConfig(failure_threshold=1),
        clock=clock,
        wall_clock=clock.wall,
    )
    with tracer.start_as_current_span("agent.budget"):
        attempt(breaker, "fail")
        attempt(breaker, "fail")  # rejected: not a transition, no event
    (span,) = exporter.get_finished_spans()
    (event,) = span.events
    assert event.name == "breaker.transition"
    assert dict(event.attributes) == {
        "ers.breaker.name": "budget",
        "ers.breaker.from": "closed",
        "ers.breaker.to": "open",
        "ers.breaker.reason": "1 consecutive failures, last: TimeoutError: upstream timed out",
    }
    assert event.timestamp == int(WALL_EPOCH * 1e9)


def test_span_events_can_be_turned_off(clock: ManualClock) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    breaker = make_breaker(clock, failure_threshold=1)  # span_events=False
    with provider.get_tracer("test").start_as_current_span("agent.budget"):
        attempt(breaker, "fail")
    assert exporter.get_finished_spans()[0].events == ()


def test_snapshot_is_json_ready_with_the_documented_keys(clock: ManualClock) -> None:
    breaker = make_breaker(clock, failure_threshold=2, sliding_window_size=2, minimum_calls=2)
    breaker.acquire().record_failure(DependencyError("x" * 1000))
    clock.advance(1.5)
    breaker.acquire().record_failure(TimeoutError("upstream timed out"))
    snapshot = breaker.snapshot()
    json.dumps(snapshot)
    assert snapshot == {
        "name": "budget",
        "state": "open",
        "failureCount": 2,
        "failureRate": 1.0,
        "slowCallRate": 0.0,
        "bufferedCalls": 2,
        "lastFailureAt": "2023-11-14T22:13:21.500Z",
        "lastError": "TimeoutError: upstream timed out",
        "openedAt": "2023-11-14T22:13:21.500Z",
        "nextAttemptAt": "2023-11-14T22:13:51.500Z",
        "openDurationS": 30.0,
        "forced": None,
        "halfOpenInFlight": 0,
        "rejectedCalls": 0,
    }


def test_last_error_is_truncated_to_300_characters(clock: ManualClock) -> None:
    breaker = make_breaker(clock)
    breaker.acquire().record_failure(DependencyError("x" * 1000))
    last_error = breaker.snapshot()["lastError"]
    assert isinstance(last_error, str)
    assert len(last_error) == 300 and last_error.startswith("DependencyError: xxx")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"failure_threshold": 0}, "failure_threshold must be a whole number from 1 to 1000"),
        ({"sliding_window_size": 10**9}, "sliding_window_size must be a whole number from 1 to"),
        ({"open_duration_s": 1e300}, "open_duration_s must be a positive number of seconds, at"),
        ({"max_open_duration_s": float("inf")}, "max_open_duration_s must be a positive"),
        ({"failure_rate_threshold": 1.5}, r"failure_rate_threshold is a share of calls in \(0, 1]"),
        ({"slow_call_rate_threshold": 0}, "slow_call_rate_threshold is a share"),
        ({"sliding_window_size": 5, "minimum_calls": 6}, "minimum_calls \\(6\\) cannot exceed"),
        ({"open_duration_s": -1}, "open_duration_s must be a positive number of seconds"),
        ({"open_duration_s": 60, "max_open_duration_s": 30}, "must be at least open_duration_s"),
        ({"open_backoff_multiplier": 0.5}, "open_backoff_multiplier must be from 1 to 100"),
        ({"open_backoff_multiplier": float("nan")}, "open_backoff_multiplier must be from 1"),
        ({"half_open_max_calls": 0}, "half_open_max_calls must be"),
        ({"half_open_max_wait_s": 0}, "half_open_max_wait_s must be a positive number"),
        ({"history_size": 0}, "history_size must be"),
        ({"record_exceptions": ("TimeoutError",)}, "record_exceptions takes exception classes"),
        ({"slow_call_duration_s": float("nan")}, "slow_call_duration_s must be a positive"),
    ],
)
def test_config_validation_names_the_problem(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="invalid breaker config: .*" + message):
        BreakerConfig(**settings)


def test_config_defaults_are_the_documented_ones() -> None:
    config = BreakerConfig()
    assert (config.failure_threshold, config.failure_rate_threshold) == (5, 0.5)
    assert (config.sliding_window_size, config.minimum_calls) == (20, 10)
    assert (config.slow_call_duration_s, config.slow_call_rate_threshold) == (5.0, 1.0)
    assert (config.open_duration_s, config.open_backoff_multiplier) == (30.0, 2.0)
    assert config.max_open_duration_s == 300.0
    assert (config.half_open_max_calls, config.half_open_success_threshold) == (1, 1)
    assert config.half_open_max_wait_s == 10.0
    assert (config.record_exceptions, config.ignore_exceptions) == ((Exception,), ())
    assert config.history_size == 100


def test_default_clocks_are_real(clock: ManualClock) -> None:
    breaker = CircuitBreaker("real", BreakerConfig(failure_threshold=1))
    attempt(breaker, "fail")
    snapshot = breaker.snapshot()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(snapshot["openedAt"]))
    assert repr(breaker) == "CircuitBreaker('real', state=open)"


def test_a_trial_gate_holds_half_open_trials_back_until_it_admits(clock: ManualClock) -> None:
    breaker = make_breaker(clock)
    admits = False
    breaker.trial_gate = lambda: admits
    breaker.acquire().record_success()  # closed: the gate is not asked
    breaker.force_open("alert", "alertmanager")
    breaker.release(source="alertmanager")
    with pytest.raises(CallNotPermitted) as rejected:
        breaker.acquire()
    assert rejected.value.retry_after_s is None
    assert "trial call runs on another replica" in str(rejected.value)
    assert breaker.state is BreakerState.HALF_OPEN
    admits = True
    breaker.acquire().record_success()
    assert breaker.state is BreakerState.CLOSED
