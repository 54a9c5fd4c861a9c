"""Stamps replicas leave each other in ``ers_fleet.stamps``: small values that say something
changed elsewhere (another replica's change of the snapshot list), kept outside the state
that is backed up and rolled back. In ``system_state`` a stamp written after every backup
made that component change with every backup, so a scheduled backup never found it
unchanged, and a rollback of it would have put an old stamp back."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from service.errors import StoreUnavailable
from service.fleet.outage import pool_of
from service.fleet.schema import COMPONENT
from service.stores.postgres import PostgresDatabase

_GET = "SELECT value FROM ers_fleet.stamps WHERE key = %s"
_PUT = """INSERT INTO ers_fleet.stamps (key, value) VALUES (%s, %s)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()"""


class FleetStamps:
    def __init__(self, database: PostgresDatabase) -> None:
        self._database = database

    async def get(self, key: str) -> Any | None:
        rows = await self._run(_GET, (key,))
        return rows[0]["value"] if rows else None

    async def put(self, key: str, value: Any) -> None:
        await self._run(_PUT, (key, Jsonb(value)))

    async def _run(self, statement: str, params: tuple[Any, ...]) -> list[Any]:
        database = self._database
        try:
            async with pool_of(database).connection(database.connection_wait_s()) as conn:
                cursor = await conn.execute(statement, params)
                return await cursor.fetchall() if cursor.description is not None else []
        except (psycopg.Error, TimeoutError) as exc:
            reason = "no connection in time" if isinstance(exc, TimeoutError) else None
            raise StoreUnavailable(COMPONENT, reason or database.reason(exc)) from None
