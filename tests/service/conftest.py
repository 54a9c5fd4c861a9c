"""The component stores on each engine: ``stores`` runs a contract test on SQLite files and on
a real PostgreSQL server; ``sqlite_stores`` and ``pg_stores`` serve what one engine alone does."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest

from service.stores import Stores
from tests.store_writes import opened

# Rows of ``sql`` read on a connection of the test's own; ``{at}`` names the component's tables.
ReadElsewhere = Callable[[str, str, tuple[Any, ...]], list[tuple[Any, ...]]]


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def stores(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Stores]:
    """The same behaviour tests run against SQLite files and a real PostgreSQL server."""
    if engine == "sqlite":
        async with opened(Stores.in_directory(tmp_path)) as both:
            yield both
    else:
        async with opened(Stores.on_postgres(request.getfixturevalue("pg_url"))) as both:
            yield both


@pytest.fixture
def read_elsewhere(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> ReadElsewhere:
    def read(component: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if engine == "sqlite":
            with closing(sqlite3.connect(tmp_path / f"{component}.sqlite3")) as conn:
                return conn.execute(sql.format(at="main"), params).fetchall()
        with psycopg.connect(request.getfixturevalue("pg_url")) as conn:
            query = sql.format(at=f"ers_{component}").replace("?", "%s")
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    return read


@pytest.fixture
async def sqlite_stores(tmp_path: Path) -> AsyncIterator[Stores]:
    async with opened(Stores.in_directory(tmp_path)) as sqlite:
        yield sqlite


@pytest.fixture
async def pg_stores(pg_url: str) -> AsyncIterator[Stores]:
    async with opened(Stores.on_postgres(pg_url)) as pg:
        yield pg
