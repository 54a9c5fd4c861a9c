"""User profiles: what the nutrition and workout agents plan from."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from service.stores.base import Profile
from service.stores.sqlite import SqliteStore

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


def profile_from_row(row: Any, equipment: Iterable[str]) -> Profile:
    """A profile from a ``profiles`` row of either backend (each stores equipment its way)."""
    return Profile(
        user_id=row["user_id"],
        age=row["age"],
        weight_kg=row["weight_kg"],
        height_cm=row["height_cm"],
        sex=row["sex"],
        activity=row["activity"],
        goal=row["goal"],
        level=row["level"],
        equipment=tuple(equipment),
    )


def check_profile_fields(fields: dict[str, Any]) -> None:
    """Raise ValueError naming any field a profile does not have."""
    unknown = set(fields) - set(PROFILE_FIELDS)
    if unknown:
        raise ValueError(f"unknown profile fields: {', '.join(sorted(unknown))}")


class ProfileStore(SqliteStore):
    component = "profiles"
    schema = (
        """CREATE TABLE IF NOT EXISTS profiles (
            user_id TEXT PRIMARY KEY,
            age INTEGER,
            weight_kg REAL,
            height_cm REAL,
            sex TEXT,
            activity TEXT,
            goal TEXT,
            level TEXT,
            equipment TEXT NOT NULL DEFAULT '[]',
            updated_at REAL NOT NULL
        )""",
    )

    async def get(self, user_id: str) -> Profile | None:
        row = self.query_one("SELECT * FROM profiles WHERE user_id = ?", (user_id,))
        if row is None:
            return None
        return profile_from_row(row, json.loads(row["equipment"]))

    async def upsert(self, user_id: str, **fields: Any) -> Profile:
        """Set the given fields (None values are left as they were)."""
        check_profile_fields(fields)
        given = {key: value for key, value in fields.items() if value is not None}
        if "equipment" in given:
            given["equipment"] = json.dumps(list(given["equipment"]))
        columns = ["user_id", *given, "updated_at"]
        placeholders = ", ".join("?" for _ in columns)
        updates = ", ".join(f"{name} = excluded.{name}" for name in [*given, "updated_at"])
        self.execute(
            f"INSERT INTO profiles ({', '.join(columns)}) VALUES ({placeholders})"
            f" ON CONFLICT (user_id) DO UPDATE SET {updates}",
            (user_id, *given.values(), time.time()),
        )
        profile = await self.get(user_id)
        assert profile is not None
        return profile
