"""An agent's error may quote the URL or the conninfo it failed on, password and all. The
incident made of it shows the secret redacted; the breaker's last error, the refusal of a
reset whose probe still fails and the system test's step show the same words, and so the
same redaction."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from service.settings import Settings

SECRET = "hunter2"
MESSAGE = f"connection to postgres://ers:{SECRET}@db:5432/budgets failed password={SECRET}"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The breaker alone: the responder would force it open on the incident."""
    return settings.model_copy(update={"auto_response_enabled": False})


async def test_the_words_of_an_agent_error_have_its_secrets_redacted(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    injected = await client.post(
        "/api/emergency/simulate-error",
        json={"component": "budget", "errorType": "database", "message": MESSAGE},
    )
    assert injected.status_code == 200
    for _ in range(5):
        reply = await client.post("/chat", json={"message": "budget report"})
        assert reply.status_code == 200
        assert SECRET not in reply.text
    assert app.state.runtime.team.get("budget").breaker.state.value == "open"

    breakers = await client.get("/api/emergency/circuit-breakers")
    budget = breakers.json()["breakers"]["budget"]
    assert budget["lastError"] == (
        "SimulatedDatabaseError: connection to postgres://REDACTED:REDACTED@db:5432/budgets "
        "failed password=REDACTED"
    )
    assert SECRET not in breakers.text

    refused = await client.post("/api/emergency/circuit-breaker/budget/reset", json={})
    assert refused.status_code == 409
    assert "postgres://REDACTED:REDACTED@db" in refused.json()["detail"]
    assert SECRET not in refused.text

    tested = await client.post("/api/emergency/test-system")
    steps = {step["step"]: step for step in tested.json()["steps"]}
    assert steps["agent:budget"]["passed"] is False
    assert "password=REDACTED" in steps["agent:budget"]["detail"]
    assert SECRET not in tested.text
