"""The chat service commits the writes of the attempt that answered, once: a guard that
retries an agent does not record the failed attempt's expense too."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from service.agents.base import AgentReply, AgentRequest
from service.agents.budget import BudgetAgent
from service.agents.router import RouterAgent
from service.chat.service import ChatService
from service.chat.team import Team
from service.errors import DependencyError, UserInputError
from service.resilience.breaker import BreakerConfig
from service.resilience.guard_config import GuardConfig
from service.stores import Stores
from tests.store_writes import turn_count


class FailsOnTheWayOut:
    """The budget agent behind a dependency that fails its first call after the agent did
    its work, as a flaky downstream service would."""

    name = "budget"

    def __init__(self, agent: BudgetAgent) -> None:
        self.agent = agent
        self.calls = 0

    async def handle(self, request: AgentRequest) -> AgentReply:
        reply = await self.agent.handle(request)
        self.calls += 1
        if self.calls == 1:
            raise DependencyError("the downstream ledger dropped the connection")
        return reply


@pytest.fixture
def stores(sqlite_stores: Stores) -> Stores:
    return sqlite_stores


async def test_a_retried_agent_records_its_expense_once(stores: Stores) -> None:
    team = Team(
        tracer=trace.get_tracer("test"),
        instruments=None,
        faults=None,
        breaker_config=BreakerConfig(ignore_exceptions=(UserInputError,)),
        guard_config=GuardConfig(backoff_initial_s=0.001),
    )
    flaky = FailsOnTheWayOut(BudgetAgent(stores.budgets))
    budget = team.protect(flaky)
    team.protect(RouterAgent({"budget": budget}))
    chat = ChatService(team.router, stores.units)

    result = await chat.chat("spent $5 on groceries", "u1")

    assert flaky.calls == 2
    assert "Recorded $5.00 for food" in result.body["response"]
    assert "spent $5.00" in result.body["response"]
    assert [(r.category, r.spent_cents) for r in await stores.budgets.report("u1")] == [
        ("food", 500)
    ]
    assert await turn_count(stores.conversations) == 1
