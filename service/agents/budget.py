"""The budget agent (the seed's BMA): monthly limits per category, expenses, what is left."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from service.agents.base import AgentReply, AgentRequest
from service.agents.parsing import format_cents, parse_money_cents
from service.stores.base import BudgetBackend
from service.stores.writes import AddExpense, SetBudgetLimit, Write, report_with

if TYPE_CHECKING:
    from service.stores import Stores

CATEGORIES = {
    "food": (
        "food",
        "groceries",
        "grocery",
        "restaurant",
        "restaurants",
        "eating out",
        "lunch",
        "dinner",
        "coffee",
        "meal",
        "meals",
    ),
    "housing": ("rent", "mortgage", "housing"),
    "transport": ("transport", "gas", "fuel", "bus", "train", "taxi", "uber", "car", "transit"),
    "utilities": ("utilities", "electricity", "water bill", "internet", "phone"),
    "entertainment": (
        "entertainment",
        "movies",
        "movie",
        "games",
        "concert",
        "netflix",
        "streaming",
        "fun",
    ),
    "health": ("health", "gym", "pharmacy", "doctor", "medicine"),
    "shopping": ("shopping", "clothes", "clothing", "shoes"),
    "savings": ("savings", "saving"),
}
_SET = re.compile(r"\b(set|limit|budget of|budget to|allocate|monthly budget|per month|a month)\b")
_SPENT = re.compile(r"\b(spent|spend|paid|pay|bought|buy|expense|cost)\b")
_REPORT = re.compile(r"\b(report|left|remaining|show|summary|status|overview)\b")


def find_category(text: str) -> str | None:
    for category, words in CATEGORIES.items():
        for word in words:
            if re.search(rf"\b{re.escape(word)}\b", text):
                return category
    return None


GENERAL_GUIDANCE = (
    "The budget agent is unavailable, so no expense or limit in this message was recorded: "
    "send it again later. General guidance meanwhile: a common starting split is "
    "50% of take-home pay for needs, 30% for wants and 20% for savings; write down each "
    "expense the day you make it and check the totals weekly."
)


class BudgetAgent:
    name = "budget"

    def __init__(self, budgets: BudgetBackend) -> None:
        self._budgets = budgets

    async def handle(self, request: AgentRequest) -> AgentReply:
        text = request.message.lower()
        category = find_category(text)
        spending = bool(_SPENT.search(text)) and not _SET.search(text)
        setting = bool(_SET.search(text)) or ("budget" in text and not _REPORT.search(text))
        # Only an amount that will be recorded is read: a report may mention any number.
        # parse_money_cents refuses one it cannot take as written, so nothing is recorded.
        amount = parse_money_cents(text) if spending or setting else None
        if amount is not None and spending:
            category = category or "other"
            expense = AddExpense(request.user_id, category, amount, request.message[:200])
            return await self._report(
                request, f"Recorded {format_cents(amount)} for {category}.", (expense,)
            )
        if amount is not None and setting:
            if category is None:
                return AgentReply(
                    content=(
                        f"Which category is the {format_cents(amount)} budget for? Try: "
                        "'set my food budget to $400'. Categories: " + ", ".join(CATEGORIES) + "."
                    ),
                    agent=self.name,
                    confidence=0.7,
                )
            limit = SetBudgetLimit(request.user_id, category, amount)
            return await self._report(
                request, f"Set your monthly {category} budget to {format_cents(amount)}.", (limit,)
            )
        return await self._report(request, "")

    async def _report(
        self, request: AgentRequest, prefix: str, writes: tuple[Write, ...] = ()
    ) -> AgentReply:
        """The month so far, as it will be once this turn's writes are committed."""
        stored = await self._budgets.report(request.user_id)
        rows = report_with(stored, request.user_id, (*request.pending, *writes))
        if not rows:
            content = (
                "You have no budgets yet. Set one with 'set my food budget to $400', then tell "
                "me what you spend: 'spent $25 on groceries'."
            )
            return AgentReply(
                content=(prefix + " " + content).strip(), agent=self.name, writes=writes
            )
        lines = [prefix] if prefix else []
        lines.append("This month:")
        for row in rows:
            if row.limit_cents is None:
                lines.append(f"- {row.category}: spent {format_cents(row.spent_cents)} (no budget)")
            else:
                left = row.left_cents or 0
                state = "left" if left >= 0 else "over"
                lines.append(
                    f"- {row.category}: spent {format_cents(row.spent_cents)} of "
                    f"{format_cents(row.limit_cents)}, {format_cents(abs(left))} {state}"
                )
        data = {
            r.category: {"limitCents": r.limit_cents, "spentCents": r.spent_cents} for r in rows
        }
        return AgentReply(
            content="\n".join(lines), agent=self.name, data={"categories": data}, writes=writes
        )


def create(name: str, stores: Stores) -> BudgetAgent:
    """The ``ers.agents`` entry point ``budget``: the built-in agent, named ``name``."""
    agent = BudgetAgent(stores.budgets)
    agent.name = name
    return agent
