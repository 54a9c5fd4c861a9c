"""Settings that only pass a value on reach the part they configure: the breakers' defaults,
the idempotency keys' policy, the telemetry switch."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.chat.team import breaker_configs
from service.settings import load_settings
from service.stores import Stores
from service.web.app import create_app

pytestmark = pytest.mark.usefixtures("without_ers_settings")


def test_the_breaker_settings_are_every_agent_s_breaker_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ERS_CIRCUIT_BREAKER_THRESHOLD", "3")
    monkeypatch.setenv("ERS_BREAKER_FAILURE_RATE_THRESHOLD", "0.25")
    monkeypatch.setenv("ERS_BREAKER_SLOW_CALL_S", "2.5")
    monkeypatch.setenv("ERS_BREAKER_OPEN_DURATION_S", "12")
    monkeypatch.setenv("ERS_BREAKER_MAX_OPEN_DURATION_S", "120")
    default, per_agent = breaker_configs(load_settings())
    assert (default.failure_threshold, default.failure_rate_threshold) == (3, 0.25)
    assert default.slow_call_duration_s == 2.5
    assert (default.open_duration_s, default.max_open_duration_s) == (12, 120)
    assert per_agent == {}


def test_the_idempotency_settings_are_the_stores_key_policy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ERS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ERS_IDEMPOTENCY_KEY_TTL_S", "600")
    monkeypatch.setenv("ERS_IDEMPOTENCY_KEYS_MAX", "25")
    policy = Stores.from_settings(load_settings()).key_policy
    assert (policy.ttl_s, policy.max_keys) == (600, 25)


@pytest.mark.parametrize("enabled", [True, False])
def test_telemetry_enabled_decides_whether_spans_are_recorded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, enabled: bool
) -> None:
    monkeypatch.setenv("ERS_TELEMETRY_ENABLED", str(enabled).lower())
    app = create_app(load_settings())
    telemetry = app.state.telemetry
    try:
        assert telemetry.enabled is enabled
        with telemetry.tracer.start_as_current_span("chat") as span:
            assert span.is_recording() is enabled
    finally:
        telemetry.shutdown()
    # Incidents come from spans: a start without them says what it goes without.
    warned = "no failing call becomes an incident" in caplog.text
    assert warned is not enabled, caplog.text
