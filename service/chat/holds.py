"""What stands in an agent's place while it is away, and what ends it.

The responder's ``serve_cached`` answers from the agent's last good answers instead of
calling it; a rate-limit cooldown leaves it alone for the time it asked. Both are put in
place on their own; they end when the agent is back. The cached answers end on the breaker's
events (``end_holds_when_back``), so however the breaker comes back, on every replica; the
cooldown ends only when someone has just heard the agent answer (``with_ended_holds``: an
operator's reset, an alert's passing probe), never because another call, or another
replica's trial, got through while the agent was asking to be left alone.
"""

from __future__ import annotations

from collections.abc import Callable

from service.resilience.breaker import BreakerState
from service.resilience.breaker_events import BreakerEvent, BreakerEventKind
from service.resilience.guard import GuardedAgent


def end_holds_when_back(guarded: GuardedAgent) -> None:
    """End the responder's cached answers when the agent's breaker says it is back: closed
    (a trial answered; an operator, an alert's probe or another replica reset it), or a
    forcing lifted by someone (not one run out), so that the trial calls reach the agent."""
    fallback = guarded.fallback

    def on_event(event: BreakerEvent) -> None:
        if event.to_state is BreakerState.CLOSED or (
            event.from_state is BreakerState.FORCED_OPEN and event.source is not None
        ):
            fallback.stop_serving_cached()

    guarded.breaker.subscribe(on_event, (BreakerEventKind.STATE_TRANSITION, BreakerEventKind.RESET))


def with_ended_holds(guard: GuardedAgent, change: Callable[[], str]) -> str:
    """``change`` (an operator's reset or release, an alert's probe closing the breaker)
    with what ended with it, in its message: the cached answers (by the breaker's events),
    and the rate-limit cooldown when the breaker is closed after it: the agent answered a
    probe just now, or the operator forced it."""
    serving, cooling = guard.fallback.serving_cached(), guard.cooldown_remaining() > 0
    message = change()
    if guard.breaker.state is BreakerState.CLOSED:
        guard.end_cooldown()
    if serving and not guard.fallback.serving_cached():
        message += "; its cached answers are no longer served in its place"
    if cooling and guard.cooldown_remaining() == 0:
        message += "; its rate-limit cooldown is over"
    return message
