"""The breakers check names every agent whose calls fall back: one cooling down after a rate
limit is named beside the breakers that are not closed, and counts as isolated towards
"most agents isolated", as the system state counts it."""

from __future__ import annotations

import asyncio

from service.health.checks import BreakersCheck, Status


def run(states: dict[str, str], cooling: dict[str, float]) -> tuple[Status, str]:
    result = asyncio.run(BreakersCheck(lambda: states, lambda: cooling).run())
    return result.status, result.reason


def test_a_cooldown_is_named_beside_a_breaker_that_is_not_closed() -> None:
    states = {"router": "closed", "workout": "half_open", "helper": "closed", "budget": "closed"}
    assert run(states, {"helper": 28.3}) == (
        Status.DEGRADED,
        "not closed: workout; cooling down (rate limited): helper (28 s left)",
    )


def test_most_agents_cut_off_by_breakers_and_cooldowns_is_unhealthy() -> None:
    states = {"router": "closed", "workout": "open", "helper": "closed", "budget": "closed"}
    assert run(states, {"helper": 10.0, "budget": 5.0}) == (
        Status.UNHEALTHY,
        "most agents isolated: workout, budget (cooling down), helper (cooling down)",
    )


def test_alone_each_reads_as_before() -> None:
    states = {"router": "closed", "workout": "open", "helper": "closed", "budget": "closed"}
    assert run(states, {}) == (Status.DEGRADED, "not closed: workout")
    closed = dict(states, workout="closed")
    assert run(closed, {"helper": 597.6}) == (
        Status.DEGRADED,
        "cooling down (rate limited): helper (598 s left)",
    )
    assert run(closed, {}) == (Status.HEALTHY, "every breaker closed")


def test_the_router_out_is_unhealthy_as_the_system_state_says() -> None:
    states = {"router": "open", "workout": "closed", "helper": "closed", "budget": "closed"}
    assert run(states, {}) == (
        Status.UNHEALTHY,
        "the router is out, every chat answered by a fallback: router",
    )
