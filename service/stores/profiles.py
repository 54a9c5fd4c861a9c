"""User profiles: what the nutrition and workout agents plan from."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from service.stores.base import Profile
from service.stores.sqlite import SqliteStore
from service.stores.writes import UpdateProfile


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
        await self.commit_writes(UpdateProfile.of(user_id, **fields))
        profile = await self.get(user_id)
        assert profile is not None
        return profile
