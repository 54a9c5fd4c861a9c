"""The breaker against a plain reference model of its rules, over generated call sequences."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import UserInputError
from service.resilience.breaker import (
    BreakerConfig,
    CallNotPermitted,
    CircuitBreaker,
    ProbeOutcome,
    ResetRefused,
)


@dataclass
class ReferenceBreaker:
    """The rules written as directly as possible: lists instead of rings, no laziness tricks
    beyond the documented one (leaving OPEN or an expired FORCED_OPEN happens at a call, or
    when the breaker is reported)."""

    config: BreakerConfig
    now: float = 0.0
    state: str = "closed"
    window: list[str] = field(default_factory=list)
    consecutive_failures: int = 0
    trips: int = 0
    open_duration: float = 0.0
    reopen_at: float = 0.0
    forced_until: float | None = None
    trial_successes: int = 0
    last_failure_at: float | None = None

    def __post_init__(self) -> None:
        self.start_fresh()

    def start_fresh(self) -> None:
        self.window = []
        self.consecutive_failures = 0
        self.trips = 0
        self.open_duration = self.config.open_duration_s
        self.forced_until = None
        self.trial_successes = 0
        self.last_failure_at = None

    def enter(self, state: str) -> None:
        self.state = state
        self.trial_successes = 0

    def move_on_by_time(self) -> None:
        if self.state == "open" and self.now >= self.reopen_at:
            self.enter("half_open")
        if (
            self.state == "forced_open"
            and self.forced_until is not None
            and self.now >= self.forced_until
        ):
            self.enter("half_open")

    def admits_a_call(self) -> bool:
        self.move_on_by_time()
        return self.state in ("closed", "half_open", "disabled")

    def trip(self) -> None:
        self.trips += 1
        if self.trips > 1:
            self.open_duration = min(
                self.config.max_open_duration_s,
                self.open_duration * self.config.open_backoff_multiplier,
            )
        self.reopen_at = self.now + self.open_duration
        self.enter("open")

    def call(self, outcome: str) -> bool:
        if not self.admits_a_call():
            return False
        if self.state == "disabled" or outcome == "ignored":
            return True
        if outcome == "fail":
            self.consecutive_failures += 1
            self.last_failure_at = self.now
        if self.state == "half_open":
            if outcome != "ok":
                self.trip()
                return True
            self.trial_successes += 1
            if self.trial_successes >= self.config.half_open_success_threshold:
                self.start_fresh()
                self.enter("closed")
            return True
        if outcome != "fail":
            self.consecutive_failures = 0
        self.window = (self.window + [outcome])[-self.config.sliding_window_size :]
        size = len(self.window)
        rates_judged = size >= self.config.minimum_calls
        if self.consecutive_failures >= self.config.failure_threshold or (
            rates_judged
            and (
                self.window.count("fail") / size >= self.config.failure_rate_threshold
                or self.window.count("slow") / size >= self.config.slow_call_rate_threshold
            )
        ):
            self.trip()
        return True

    def abandon_call(self) -> bool:
        return self.admits_a_call()

    def force_open(self, ttl_s: float | None) -> None:
        self.forced_until = None if ttl_s is None else self.now + ttl_s
        if self.state != "forced_open":
            self.enter("forced_open")

    def release(self) -> None:
        if self.state == "forced_open":
            self.forced_until = None
            self.enter("half_open")

    def reset(self, force: bool, probe_passed: bool | None) -> bool:
        """``probe_passed`` is None when no probe ran. A failed probe refuses the reset in
        any state; without one, an open breaker's recent failure does."""
        if not force and probe_passed is False:
            return False
        if not force and self.state in ("open", "forced_open"):
            recent = (
                probe_passed is None
                and self.last_failure_at is not None
                and self.now - self.last_failure_at < self.open_duration
            )
            if recent:
                return False
        self.start_fresh()
        self.enter("closed")
        return True

    def disable(self) -> None:
        self.forced_until = None
        self.enter("disabled")

    def enable(self) -> None:
        if self.state == "disabled":
            self.start_fresh()
            self.enter("closed")


configs = st.builds(
    lambda threshold, window, minimum_share, failure_rate, slow_rate, open_s, growth, cap, s, k: (
        BreakerConfig(
            failure_threshold=threshold,
            sliding_window_size=window,
            minimum_calls=max(1, round(window * minimum_share)),
            failure_rate_threshold=failure_rate,
            slow_call_rate_threshold=slow_rate,
            slow_call_duration_s=2.0,
            open_duration_s=open_s,
            open_backoff_multiplier=growth,
            max_open_duration_s=open_s * cap,
            half_open_success_threshold=s,
            half_open_max_calls=k,
            ignore_exceptions=(UserInputError,),
        )
    ),
    st.integers(1, 4),
    st.integers(1, 6),
    st.sampled_from([0.0, 0.5, 1.0]),
    st.sampled_from([0.25, 0.5, 1.0]),
    st.sampled_from([0.5, 1.0]),
    st.sampled_from([1.0, 5.0, 10.0]),
    st.sampled_from([1.0, 1.5, 2.0, 3.0]),
    st.sampled_from([1.0, 4.0]),
    st.integers(1, 3),
    st.integers(1, 3),
)

ARGUMENTS = {
    "call": st.tuples(st.sampled_from(["ok", "ok", "slow", "fail", "fail", "ignored"])),
    "advance": st.tuples(st.sampled_from([0.5, 1.0, 2.5, 5.0, 10.0, 40.0])),
    "force": st.tuples(st.sampled_from([None, 1.0, 5.0, 10.0])),
    "reset": st.tuples(st.booleans(), st.sampled_from([None, True, False])),
}
# Calls and clock advances dominate, so generated runs reach open, half-open and back.
WEIGHTED_KINDS = ["call"] * 10 + ["advance"] * 4 + ["abandon", "force", "release", "reset"]
WEIGHTED_KINDS += ["disable", "enable"]
operations = st.sampled_from(WEIGHTED_KINDS).flatmap(
    lambda kind: ARGUMENTS.get(kind, st.just(())).map(lambda arguments: (kind, *arguments))
)

DURATIONS = {"ok": 0.1, "slow": 2.0}


def call_breaker(breaker: CircuitBreaker, outcome: str) -> bool:
    try:
        permit = breaker.acquire()
    except CallNotPermitted:
        return False
    if outcome in DURATIONS:
        permit.record_success(DURATIONS[outcome])
    elif outcome == "fail":
        permit.record_failure(TimeoutError("upstream timed out"), 0.1)
    elif outcome == "ignored":
        permit.record_failure(UserInputError("bad amount"), 0.1)
    else:
        permit.release()
    return True


def reset_breaker(breaker: CircuitBreaker, force: bool, probe_passed: bool | None) -> bool:
    probe = None if probe_passed is None else ProbeOutcome(None if probe_passed else "down")
    try:
        breaker.reset(force=force, probe=probe)
    except ResetRefused:
        return False
    return True


@settings(max_examples=200, deadline=None)
@given(config=configs, script=st.lists(operations, min_size=20, max_size=100))
def test_breaker_matches_the_reference_model(config: BreakerConfig, script: list[tuple]) -> None:
    model = ReferenceBreaker(config)
    breaker = CircuitBreaker(
        "model", config, clock=lambda: model.now, wall_clock=lambda: model.now, span_events=False
    )
    for step, operation in enumerate(script):
        kind, *arguments = operation
        if kind == "call":
            assert call_breaker(breaker, arguments[0]) == model.call(arguments[0]), step
        elif kind == "abandon":
            assert call_breaker(breaker, "abandon") == model.abandon_call(), step
        elif kind == "advance":
            model.now += arguments[0]
        elif kind == "force":
            breaker.force_open("generated", "hypothesis", arguments[0])
            model.force_open(arguments[0])
        elif kind == "release":
            breaker.release()
            model.release()
        elif kind == "reset":
            assert reset_breaker(breaker, *arguments) == model.reset(*arguments), step
        elif kind == "disable":
            breaker.disable()
            model.disable()
        elif kind == "enable":
            breaker.enable()
            model.enable()
        snapshot = breaker.snapshot()  # a report: it moves on what time alone decides
        model.move_on_by_time()
        observed = (
            breaker.state.value,
            snapshot["failureCount"],
            snapshot["bufferedCalls"],
            snapshot["openDurationS"],
        )
        expected = (
            model.state,
            model.consecutive_failures,
            len(model.window),
            model.open_duration,
        )
        assert observed == expected, f"after step {step} {operation}"
