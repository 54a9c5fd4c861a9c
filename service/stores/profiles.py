"""User profiles: what the nutrition and workout agents plan from."""

from __future__ import annotations

import json
import time
from typing import Any

from service.stores.base import Profile
from service.stores.sqlite import SqliteStore

_COLUMNS = ("age", "weight_kg", "height_cm", "sex", "activity", "goal", "level", "equipment")


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
        return Profile(
            user_id=row["user_id"],
            age=row["age"],
            weight_kg=row["weight_kg"],
            height_cm=row["height_cm"],
            sex=row["sex"],
            activity=row["activity"],
            goal=row["goal"],
            level=row["level"],
            equipment=tuple(json.loads(row["equipment"])),
        )

    async def upsert(self, user_id: str, **fields: Any) -> Profile:
        """Set the given fields (None values are left as they were)."""
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown profile fields: {', '.join(sorted(unknown))}")
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
