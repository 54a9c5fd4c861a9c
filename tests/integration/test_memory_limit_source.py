"""GET /api/emergency/health over HTTP says what the memory check measures against."""

from __future__ import annotations

import httpx
import psutil

from service.health.checks import cgroup_memory_limit
from tests.conftest import ErsProcess


def test_health_names_the_memory_limit_and_its_source(ers_process: ErsProcess) -> None:
    with httpx.Client(base_url=ers_process.url, timeout=10) as http:
        reply = http.get("/api/emergency/health")
    assert reply.status_code in (200, 503), reply.text
    figures = reply.json()["checks"]["memory"]["figures"]
    # The same files the service read, read again here: this machine's answer.
    limit = cgroup_memory_limit()
    if limit is None:
        assert figures["limitSource"] == "host"
        assert figures["limitBytes"] == psutil.virtual_memory().total
    else:
        assert figures["limitSource"] == "cgroup"
        assert figures["limitBytes"] == limit
    assert 0 < figures["rssBytes"] < figures["limitBytes"]
