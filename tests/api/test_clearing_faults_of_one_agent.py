"""``DELETE /api/emergency/simulate-error?component=NAME`` clears one agent's faults; without
the parameter, every agent's. An empty value names no agent: it is refused, not read as
"every agent"."""

from __future__ import annotations

import httpx

SIMULATE = "/api/emergency/simulate-error"


async def test_an_empty_component_is_refused_and_clears_nothing(
    client: httpx.AsyncClient,
) -> None:
    for agent in ("budget", "nutrition"):
        injected = await client.post(SIMULATE, json={"component": agent})
        assert injected.status_code == 200, injected.text
    for query in ("?component=", "?component"):
        refused = await client.delete(f"{SIMULATE}{query}")
        assert refused.status_code == 422, f"{query}: {refused.text}"
        assert refused.json()["detail"].startswith("component:"), refused.text
    one = await client.delete(f"{SIMULATE}?component=budget")
    assert one.status_code == 200, one.text
    assert one.json() == {"cleared": "budget", "active": ["nutrition"]}
    every = await client.delete(SIMULATE)
    assert every.json() == {"cleared": "all", "active": []}
