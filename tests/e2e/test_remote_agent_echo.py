"""A remote agent's url that reaches a server speaking no HTTP, which sends back what it
read (an echo service on the wrong port): its error quotes the request line ERS sent, and
with it a key the url carries in its query (`?key=...`, for an API that takes its key
there). Through the whole service, `ers serve` over HTTP: the key is in none of the
breaker's last error, the incident, the kept trace, the reply or the log."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from service.agents.remote import RemoteAgent
from service.agents.specs import HttpAgentSpec
from tests.conftest import start_ers

pytestmark = pytest.mark.integration

KEY = "qk-5e1f0a9c77"
TOKEN = "echo-token-b3d2"


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A TCP server on a loopback port that writes back the first bytes it reads."""

    async def serve(ready: threading.Event, port: list[int], stop: asyncio.Event) -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.read(65_536))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0, family=socket.AF_INET)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        async with server:
            await stop.wait()

    ready, port, loop = threading.Event(), [], asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(ready, port, stop),))
    thread.start()
    assert ready.wait(10)
    try:
        yield port[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def test_a_key_in_the_url_is_not_quoted_from_a_reply_that_echoes_the_request(
    tmp_path: Path, echo_server: int
) -> None:
    auth_file = tmp_path / "auth"
    auth_file.write_text(f"Bearer {TOKEN}\n")
    config = tmp_path / "ers.yaml"
    helper = {
        "kind": "http",
        "url": f"http://127.0.0.1:{echo_server}/chat?key={KEY}",
        "auth_file": str(auth_file),
        "fallbacks": ["workout"],
    }
    config.write_text(
        yaml.safe_dump(
            {
                "agents": {"workout": {"kind": "python", "factory": "workout"}, "helper": helper},
                "agent_routes": {"workout": "helper"},
            }
        )
    )
    ers = start_ers(tmp_path / "ers", env={"ERS_CONFIG": str(config)})
    try:
        with httpx.Client(base_url=ers.url, timeout=30) as http:
            reply = http.post("/chat", json={"message": "make me a workout plan", "userId": "u"})
            breaker = http.get("/api/emergency/circuit-breakers/helper").text
            incidents = http.get("/api/emergency/incidents").text
            trace = http.get(f"/api/emergency/traces/{reply.json()['traceId']}").text
            metrics = http.get("/metrics").text
    finally:
        assert ers.stop() == 0, ers.log()[-4000:]
    assert reply.status_code == 200, reply.text
    assert reply.json()["recovery"]["via"] == "workout"
    # The failure is still told: the agent's reply was no HTTP.
    assert "illegal status line" in breaker and "key=REDACTED" in breaker, breaker
    for seen in (reply.text, breaker, incidents, trace, metrics, ers.log()):
        assert KEY not in seen
        assert TOKEN not in seen


def test_an_error_of_any_kind_is_scrubbed_of_the_urls_key() -> None:
    """Not only httpx's errors: whatever the exchange raises is recorded without the key."""
    agent = RemoteAgent(
        "echoed",
        HttpAgentSpec(url="http://127.0.0.1:9/chat?key=s3cr3t-k3y"),  # type: ignore[arg-type]
        default_timeout_s=1.0,
    )
    for raised in (ValueError("b'POST /chat?key=s3cr3t-k3y HTTP/1.1'"), OSError("key=s3cr3t-k3y")):
        kept = agent._without_secrets(raised)
        assert "s3cr3t-k3y" not in str(kept)
        assert type(raised).__name__ in str(kept)
    untouched = ValueError("nothing secret")
    assert agent._without_secrets(untouched) is untouched
