"""``?timeRange=NaN`` fails every range check; it was told "less than or equal to 168", which
sends the client looking in the wrong place. It is told to send a finite number of hours."""

from __future__ import annotations

import httpx
import pytest

METRICS = "/api/emergency/metrics"


@pytest.mark.parametrize("value", ["NaN", "nan", "-nan", "inf", "-inf", "Infinity", "1e400"])
async def test_a_time_range_that_is_not_finite_is_named_as_such(
    client: httpx.AsyncClient, value: str
) -> None:
    reply = await client.get(f"{METRICS}?timeRange={value}")
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    assert detail == (
        "timeRange: must be a finite number of hours, from 1 to 168, not NaN or infinity"
    )


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("abc", "timeRange: must be a number"),
        ("169", "timeRange: Input should be less than or equal to 168"),
        ("0", "timeRange: Input should be greater than or equal to 1"),
    ],
)
async def test_other_time_ranges_are_told_as_before(
    client: httpx.AsyncClient, value: str, said: str
) -> None:
    reply = await client.get(f"{METRICS}?timeRange={value}")
    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"] == said
    assert (await client.get(f"{METRICS}?timeRange=1.5")).json()["timeRangeHours"] == 1.5
    # The same type whether given or not (it said 24 left out and 24.0 given).
    given = (await client.get(f"{METRICS}?timeRange=24")).text
    assert '"timeRangeHours":24.0' in given
    assert '"timeRangeHours":24.0' in (await client.get(METRICS)).text
