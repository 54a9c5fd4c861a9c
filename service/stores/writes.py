"""The writes one chat turn asks for, applied together with the turn after the agents answered.

Agents do not write to the stores while they run: a guard may run an agent again after a
failed attempt, and a write that had already committed would then be made twice. Instead an
agent returns the writes it wants on its reply; the chat service commits them with the
conversation turn (and the idempotency record, when the client sent a key) in one unit, or
none of them. An agent that reads what an earlier agent of the same turn is about to write
(the router saves profile facts, the nutrition agent plans from them) reads through
``profile_with``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from service.stores.base import CategoryReport, Profile

PROFILE_FIELDS = (
    "age",
    "weight_kg",
    "height_cm",
    "sex",
    "activity",
    "goal",
    "level",
    "equipment",
)


def check_profile_fields(fields: dict[str, Any]) -> None:
    """Raise ValueError naming any field a profile does not have."""
    unknown = set(fields) - set(PROFILE_FIELDS)
    if unknown:
        raise ValueError(f"unknown profile fields: {', '.join(sorted(unknown))}")


def current_month(now: float | None = None) -> str:
    return datetime.fromtimestamp(now or time.time(), UTC).strftime("%Y-%m")


@dataclass(frozen=True, slots=True)
class AddExpense:
    user_id: str
    category: str
    amount_cents: int
    note: str = ""

    component = "budgets"


@dataclass(frozen=True, slots=True)
class SetBudgetLimit:
    user_id: str
    category: str
    limit_cents: int

    component = "budgets"


@dataclass(frozen=True, slots=True)
class UpdateProfile:
    """Set the given profile fields; fields left out keep their value."""

    user_id: str
    fields: tuple[tuple[str, Any], ...]

    component = "profiles"

    @classmethod
    def of(cls, user_id: str, cleared: Sequence[str] = (), **fields: Any) -> UpdateProfile:
        """Raises ValueError naming a field a profile does not have; None means unchanged,
        and the fields ``cleared`` are emptied (no value; no equipment)."""
        check_profile_fields({**fields, **dict.fromkeys(cleared)})
        given = [(k, v) for k, v in fields.items() if v is not None and k not in cleared]
        given += [(name, () if name == "equipment" else None) for name in cleared]
        return cls(user_id, tuple(given))


Write = AddExpense | SetBudgetLimit | UpdateProfile


def profile_with(stored: Profile | None, user_id: str, writes: Sequence[Write]) -> Profile | None:
    """The profile as it will be once ``writes`` are committed."""
    profile = stored
    for write in writes:
        if isinstance(write, UpdateProfile) and write.user_id == user_id:
            base = profile or Profile(user_id)
            changes = dict(write.fields)
            if "equipment" in changes:
                changes["equipment"] = tuple(changes["equipment"])
            profile = replace(base, **changes)
    return profile


def report_with(
    rows: Sequence[CategoryReport], user_id: str, writes: Sequence[Write]
) -> list[CategoryReport]:
    """This month's report as it will be once ``writes`` are committed."""
    by_category = {row.category: row for row in rows}
    for write in writes:
        if write.user_id != user_id:
            continue
        if isinstance(write, AddExpense):
            row = by_category.get(write.category, CategoryReport(write.category, None, 0))
            by_category[write.category] = replace(
                row, spent_cents=row.spent_cents + write.amount_cents
            )
        elif isinstance(write, SetBudgetLimit):
            row = by_category.get(write.category, CategoryReport(write.category, None, 0))
            by_category[write.category] = replace(row, limit_cents=write.limit_cents)
    return [by_category[name] for name in sorted(by_category)]
