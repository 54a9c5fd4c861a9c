"""What a degraded reply names: unit tests of ReplyIncidents over the events it hears."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from service.agents.base import AgentReply
from service.incidents.replies import ReplyIncidents
from service.resilience.breaker import CircuitBreaker
from service.resilience.breaker_config import BreakerState
from service.resilience.breaker_events import BreakerEvent, BreakerEventKind

CAUSE = "SimulatedDatabaseError: Database connection timeout"


def failure(incident: str, cause: str = CAUSE) -> Any:
    """What the pipeline says of a failure of budget grouped into ``incident``."""
    return SimpleNamespace(
        incident=SimpleNamespace(id=incident, component="budget"),
        record=SimpleNamespace(status_message=cause),
    )


def degraded(**data: Any) -> AgentReply:
    return AgentReply("fallback", "budget", success=False, degraded=True, data=data)


def actions(reply: AgentReply) -> list[str]:
    return [a["action"] for a in (reply.recovery or {}).get("actions", [])]


def test_a_call_its_full_bulkhead_turned_away_names_no_incident() -> None:
    """It named the agent's latest incident, whatever that was (a critical one from
    minutes before), while the agent was only busy."""
    replies = ReplyIncidents(store=None)  # type: ignore[arg-type]
    replies.heard(failure("INC_1_aaaaaa"))
    away = replies.enrich(degraded(outcome="rejected", breaker="closed", bulkhead=True))
    assert away.incident is None and "actions" not in (away.recovery or {})
    breaker = replies.enrich(degraded(outcome="rejected", breaker="open"))
    assert breaker.incident == "INC_1_aaaaaa"


def test_actions_undone_by_a_reset_are_not_named_by_the_next_failures() -> None:
    """A reset undid the isolation; the next storm in the same incident still said
    isolate: success and serve_cached: success."""
    replies = ReplyIncidents(store=None)  # type: ignore[arg-type]
    replies.heard(failure("INC_1_aaaaaa"))
    replies.acted("INC_1_aaaaaa", "isolate", "success", "budget")
    replies.acted("INC_1_aaaaaa", "serve_cached", "success", "budget")
    turned_away = replies.enrich(degraded(outcome="rejected", breaker="forced_open"))
    assert actions(turned_away) == ["isolate", "serve_cached"]

    closed = BreakerEvent(
        BreakerEventKind.STATE_TRANSITION,
        "budget",
        BreakerState.FORCED_OPEN,
        BreakerState.CLOSED,
        0.0,
        "reset",
        "admin:token",
    )
    replies.on_breaker_transition(closed)
    replies.heard(failure("INC_1_aaaaaa"))  # the same failure again: the same incident
    again = replies.enrich(degraded(outcome="failure", cause=CAUSE))
    assert again.incident == "INC_1_aaaaaa"
    assert actions(again) == []
    replies.acted("INC_1_aaaaaa", "isolate", "success", "budget")  # done for this episode
    assert actions(replies.enrich(degraded(outcome="failure", cause=CAUSE))) == ["isolate"]


def test_an_isolation_by_another_replica_is_not_named_after_a_reset_here() -> None:
    """Known here by the fleet's forced open alone: its isolate: success outlived the
    reset that closed the breaker, and the next failures' replies named it."""
    replies = ReplyIncidents(store=None)  # type: ignore[arg-type]
    breaker = CircuitBreaker("budget")
    breaker.force_open("isolated", "responder", incident="INC_1_aaaaaa", carried=True)
    replies.on_breaker_transition(
        transition(BreakerState.CLOSED, BreakerState.FORCED_OPEN), breaker
    )
    assert actions(replies.enrich(degraded(outcome="rejected", breaker="forced_open"))) == [
        "isolate"
    ]
    replies.on_breaker_transition(transition(BreakerState.FORCED_OPEN, BreakerState.CLOSED))
    replies.heard(failure("INC_1_aaaaaa"))  # its own failures now, in the same incident
    again = replies.enrich(degraded(outcome="failure", cause=CAUSE))
    assert again.incident == "INC_1_aaaaaa" and actions(again) == []


def transition(before: BreakerState, after: BreakerState) -> BreakerEvent:
    kind = BreakerEventKind.STATE_TRANSITION
    return BreakerEvent(kind, "budget", before, after, 0.0, "reset", "admin:token")


def test_a_refused_call_names_the_incident_of_its_own_cause() -> None:
    """A remote agent's 429 or 400 is counted apart from failures ("refused"), and its reply
    still names the incident of its cause, not the agent's latest incident of another."""
    cause = "RateLimited: agent 'budget' is rate limited (HTTP 429); it asks to wait 30 s"
    replies = ReplyIncidents(store=None)  # type: ignore[arg-type]
    replies.heard(failure("INC_1_aaaaaa"))
    replies.heard(failure("INC_2_bbbbbb", cause))
    replies.heard(failure("INC_3_cccccc", "ServerError: agent 'budget' failed: HTTP 500"))
    assert replies.enrich(degraded(outcome="refused", cause=cause)).incident == "INC_2_bbbbbb"


def entry(kind: str, **data: Any) -> Any:
    return SimpleNamespace(kind=kind, data=data)


class ReopenedStore:
    """An incident reopened once (episode 1), isolated in both episodes."""

    incident = SimpleNamespace(id="INC_1_aaaaaa", status="open", reopen_count=1)

    def get(self, incident_id: str) -> Any:
        return self.incident

    def timeline(self, incident_id: str) -> list[Any]:
        ran = [
            ("isolate", 0, {}),
            ("restart_agent", 0, {}),  # the first episode's: a reopening is a new one
            ("isolate", 1, {}),
            ("serve_cached", 1, {}),  # this process's alone: gone with it
            ("minimal_response_mode", 1, {"kept": False}),  # kept nothing
            ("emergency_backup", 1, {}),
        ]
        return [
            e
            for action, episode, more in ran
            for e in (
                entry("action_started", action=action, episode=episode),
                entry("action_finished", action=action, result="success", **more),
            )
        ]


async def test_after_a_restart_the_actions_named_are_those_of_its_episode_still_true() -> None:
    """Before: a kept isolation's replies named every action its timeline held, serve_cached
    (which the new process does not do) and the earlier episodes' among them."""
    replies = ReplyIncidents(store=ReopenedStore())  # type: ignore[arg-type]
    breaker = SimpleNamespace(name="budget", forcing=SimpleNamespace(incident="INC_1_aaaaaa"))
    assert await replies.name_kept_isolations([breaker]) == ["budget"]  # type: ignore[list-item]
    turned_away = replies.enrich(degraded(outcome="rejected", breaker="forced_open"))
    assert turned_away.incident == "INC_1_aaaaaa"
    assert actions(turned_away) == ["isolate", "emergency_backup"]
