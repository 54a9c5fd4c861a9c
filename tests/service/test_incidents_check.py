"""The incidents check sums up the active incidents; while the store cannot be read, it says
that its counts are the last ones read, and is never healthy on them."""

from __future__ import annotations

import asyncio

from service.health.checks import IncidentsCheck, Status

UNREAD = "the incident store has not been readable for 4 s: incidents store unavailable"


def run(check: IncidentsCheck) -> tuple[Status, str]:
    result = asyncio.run(check.run())
    return result.status, result.reason


def test_counts_read_now_decide_as_always() -> None:
    assert run(IncidentsCheck(lambda: {"medium": 1})) == (Status.HEALTHY, "1 active incidents")
    assert run(IncidentsCheck(lambda: {"high": 1}))[0] is Status.DEGRADED
    assert run(IncidentsCheck(lambda: {"critical": 1})) == (
        Status.UNHEALTHY,
        "a critical incident is active",
    )


def test_counts_that_could_not_be_read_again_say_so() -> None:
    stale = IncidentsCheck(lambda: {"medium": 1}, lambda: UNREAD)
    assert run(stale) == (Status.DEGRADED, f"1 active incidents when last read; {UNREAD}")
    none = IncidentsCheck(dict, lambda: UNREAD)
    assert run(none)[0] is Status.DEGRADED
    critical = IncidentsCheck(lambda: {"critical": 2}, lambda: UNREAD)
    assert run(critical) == (
        Status.UNHEALTHY,
        f"a critical incident is active (2 active incidents when last read; {UNREAD})",
    )
