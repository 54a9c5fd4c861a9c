"""A name the client sent is repeated in the reply that refuses it, cut short: a 5000-character
agent name came back whole in the 404, as the path of an unknown route is not."""

from __future__ import annotations

import httpx
import pytest

LONG = "a" * 5000
ECHOED_CHARS = 200  # as the path of an unknown route is cut


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/api/emergency/circuit-breakers/{LONG}"),
        ("POST", f"/api/emergency/circuit-breaker/{LONG}/reset"),
        ("POST", f"/api/emergency/circuit-breaker/{LONG}/release"),
    ],
)
async def test_an_unknown_agents_long_name_is_cut_in_the_404(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    reply = await client.request(method, path)
    assert reply.status_code == 404, reply.text
    detail = reply.json()["detail"]
    assert detail.startswith(f"no agent named '{'a' * ECHOED_CHARS}…'; known agents: "), detail
    assert len(detail) < 2 * ECHOED_CHARS


async def test_a_short_unknown_name_is_repeated_whole(client: httpx.AsyncClient) -> None:
    reply = await client.get("/api/emergency/circuit-breakers/nope")
    assert reply.status_code == 404
    assert reply.json()["detail"].startswith("no agent named 'nope'; known agents: ")


async def test_an_unknown_routes_long_path_is_cut_as_before(client: httpx.AsyncClient) -> None:
    reply = await client.get(f"/{LONG}")
    assert reply.status_code == 404
    assert f"/{'a' * (ECHOED_CHARS - 1)}…:" in reply.json()["detail"]
    assert len(reply.json()["detail"]) < 2 * ECHOED_CHARS
