"""User profiles: what the nutrition and workout agents plan from."""

from __future__ import annotations

from service.stores.base import Profile, profile_from_row
from service.stores.component import ComponentStore, probe_table

_PROFILES = """CREATE TABLE {if_new}{at}profiles (
    user_id TEXT PRIMARY KEY,
    age INTEGER,
    weight_kg {real},
    height_cm {real},
    sex TEXT,
    activity TEXT,
    goal TEXT,
    level TEXT,
    equipment {list} NOT NULL DEFAULT '{empty}',
    updated_at {real} NOT NULL
)"""


class ProfileStore(ComponentStore):
    component = "profiles"
    # Equipment is a JSON list in SQLite, an array in PostgreSQL (see dialect).
    sqlite_ddl = (
        _PROFILES.format(if_new="IF NOT EXISTS ", at="", real="REAL", list="TEXT", empty="[]"),
    )
    pg_migrations = (
        (
            "CREATE SCHEMA IF NOT EXISTS ers_profiles",
            _PROFILES.format(
                if_new="", at="ers_profiles.", real="DOUBLE PRECISION", list="TEXT[]", empty="{}"
            ),
            probe_table("ers_profiles"),
        ),
    )

    async def get(self, user_id: str) -> Profile | None:
        row = await self.db.fetch_one(
            f"SELECT * FROM {self.at}.profiles WHERE user_id = ?", (user_id,)
        )
        if row is None:
            return None
        return profile_from_row(row, self.dialect.decode_list(row["equipment"]))
