"""The values the component stores hold, and what the agents need of a store."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ChatTurn:
    user_id: str
    message: str
    response: str
    agent: str
    success: bool
    degraded: bool
    trace_id: str | None = None
    id: int | None = None
    created_at: float | None = None


@dataclass(frozen=True, slots=True)
class Profile:
    user_id: str
    age: int | None = None
    weight_kg: float | None = None
    height_cm: float | None = None
    sex: str | None = None
    activity: str | None = None
    goal: str | None = None
    level: str | None = None
    equipment: tuple[str, ...] = field(default_factory=tuple)

    def missing_for_energy(self) -> list[str]:
        """The fields the energy calculation still needs."""
        needed = ("age", "weight_kg", "height_cm", "sex", "activity")
        return [name for name in needed if getattr(self, name) is None]

    def as_dict(self) -> dict[str, Any]:
        return {
            "userId": self.user_id,
            "age": self.age,
            "weightKg": self.weight_kg,
            "heightCm": self.height_cm,
            "sex": self.sex,
            "activity": self.activity,
            "goal": self.goal,
            "level": self.level,
            "equipment": list(self.equipment),
        }


@dataclass(frozen=True, slots=True)
class CategoryReport:
    category: str
    limit_cents: int | None
    spent_cents: int

    @property
    def left_cents(self) -> int | None:
        return None if self.limit_cents is None else self.limit_cents - self.spent_cents


class ProfileBackend(Protocol):
    async def get(self, user_id: str) -> Profile | None: ...


class BudgetBackend(Protocol):
    async def report(self, user_id: str, month: str | None = None) -> list[CategoryReport]: ...


class SystemStateBackend(Protocol):
    async def get(self, key: str) -> Any | None: ...
    async def put(self, key: str, value: Any) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def items(self) -> dict[str, Any]: ...


def profile_from_row(row: Any, equipment: Iterable[str]) -> Profile:
    """A profile from a ``profiles`` row of either engine, its equipment decoded."""
    return Profile(**{name: row[name] for name in _PROFILE_COLUMNS}, equipment=tuple(equipment))


_PROFILE_COLUMNS = tuple(f.name for f in fields(Profile) if f.name != "equipment")
