"""A breaker's open time backs off from its open duration up to its max. A max shorter than
the duration was quietly raised to it (ERS_BREAKER_MAX_OPEN_DURATION_S=10 ran with 30): it is
refused at start, with the keys to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.chat.team import breaker_configs
from service.settings import SettingsError, load_settings

pytestmark = pytest.mark.usefixtures("without_ers_settings")


def test_a_max_shorter_than_the_open_duration_stops_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ERS_BREAKER_MAX_OPEN_DURATION_S", "10")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == (
        "invalid setting 'breaker_max_open_duration_s': breaker_max_open_duration_s (10) is "
        "shorter than breaker_open_duration_s (30), the open time it backs off from; set it "
        "to at least 30, or lower breaker_open_duration_s"
    )


def test_an_open_duration_past_the_max_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERS_BREAKER_OPEN_DURATION_S", "600")
    with pytest.raises(SettingsError, match="^invalid setting 'breaker_max_open_duration_s': "):
        load_settings()


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (
            {"max_open_duration_s": 10},
            "max_open_duration_s (10) is shorter than open_duration_s (30, from "
            "breaker_open_duration_s); give agent_breakers.budget a max_open_duration_s of "
            "at least 30, or a shorter open_duration_s",
        ),
        (
            {"open_duration_s": 600},
            "max_open_duration_s (300, from breaker_max_open_duration_s) is shorter than "
            "open_duration_s (600); give agent_breakers.budget a max_open_duration_s of at "
            "least 600, or a shorter open_duration_s",
        ),
        (
            {"open_duration_s": 60, "max_open_duration_s": 45},
            "max_open_duration_s (45) is shorter than open_duration_s (60); give "
            "agent_breakers.budget a max_open_duration_s of at least 60, or a shorter "
            "open_duration_s",
        ),
    ],
)
def test_an_agents_own_max_shorter_than_its_open_duration_stops_start_up(
    tmp_path: Path, overrides: dict[str, float], said: str
) -> None:
    (tmp_path / "ers.yaml").write_text(f"agent_breakers:\n  budget: {overrides}\n")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == f"invalid setting 'agent_breakers.budget': {said}"


def test_the_durations_are_taken_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERS_BREAKER_OPEN_DURATION_S", "60")
    monkeypatch.setenv("ERS_BREAKER_MAX_OPEN_DURATION_S", "60")
    monkeypatch.setenv("ERS_AGENT_BREAKERS", '{"budget": {"max_open_duration_s": 90}}')
    default, per_agent = breaker_configs(load_settings())
    assert (default.open_duration_s, default.max_open_duration_s) == (60, 60)
    assert (per_agent["budget"].open_duration_s, per_agent["budget"].max_open_duration_s) == (
        60,
        90,
    )


def test_an_open_duration_past_its_range_is_named_as_such(tmp_path: Path) -> None:
    """It was met with "give agent_breakers.budget a max_open_duration_s of at least
    100000", a value refused in its turn (at most a day)."""
    (tmp_path / "ers.yaml").write_text("agent_breakers:\n  budget: {open_duration_s: 100000}\n")
    with pytest.raises(SettingsError) as raised:
        breaker_configs(load_settings())
    assert str(raised.value) == (
        "invalid setting 'agent_breakers.budget': invalid breaker config: open_duration_s "
        "must be a positive number of seconds, at most 86400, got 100000"
    )
