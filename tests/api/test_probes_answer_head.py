"""Probes that send HEAD (some load balancers do) get the status a GET gets, without a body:
they got 405, which a load balancer takes for a replica that is down."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from service.settings import Settings
from service.web.app import create_app


async def test_head_of_a_probe_answers_as_its_get_without_a_body(
    client: httpx.AsyncClient,
) -> None:
    for probe in ("/livez", "/readyz"):
        got = await client.get(probe)
        head = await client.head(probe)
        assert (head.status_code, got.status_code) == (200, 200), f"{probe}: {head.text}"
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers["content-length"] == got.headers["content-length"]


async def test_head_of_readyz_says_not_ready_as_its_get(app: FastAPI) -> None:
    app.state.runtime.readiness.set(False, "stopping")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ers.test") as http:
        assert (await http.get("/readyz")).status_code == 503
        head = await http.head("/readyz")
        assert head.status_code == 503
        assert head.content == b""
        assert (await http.head("/livez")).status_code == 200


async def test_head_of_readyz_before_start_up_is_503(settings: Settings) -> None:
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://ers.test") as http:
        head = await http.head("/readyz")
        assert head.status_code == 503
        assert head.content == b""


async def test_a_probe_still_refuses_other_methods(client: httpx.AsyncClient) -> None:
    for method in ("POST", "PUT", "DELETE"):
        assert (await client.request(method, "/livez")).status_code == 405
