"""What a rollback would do to each table: rows it brings back, rows it removes, rows it
changes, found by primary key between the live table and the snapshot's copy.

Each side is read as (key, digest) pairs: the key is the primary key (the whole row for a
table without one, which then has no "changed" rows, only added and removed ones), the
digest stands for the rest of the row. SQLite files are compared in this process (both are
local files); on PostgreSQL the server computes ``md5(row::text)`` so only the keys and
digests cross the network. A table with more than ``MAX_ROWS_COMPARED`` rows on either side
is counted but not compared (its changes are None): the preview must stay a preview.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from backup.errors import PgRestoreFailed
from backup.pg_tools import PgConnection

MAX_ROWS_COMPARED = 1_000_000


@dataclass(frozen=True)
class RowChanges:
    added: int  # in the snapshot, not live: the rollback brings them back
    removed: int  # live, not in the snapshot: the rollback removes them
    changed: int | None  # in both with other values; None for a table without a key


@dataclass(frozen=True)
class TableRead:
    rows: list[tuple[Any, Any]]  # (key, digest)
    keyed: bool


def compare(now: TableRead, then: TableRead) -> RowChanges:
    """The changes that turn ``now`` into ``then``."""
    if now.keyed and then.keyed:
        live, snapshot = dict(now.rows), dict(then.rows)
        changed = sum(1 for key, digest in snapshot.items() if key in live and live[key] != digest)
        return RowChanges(
            added=sum(1 for key in snapshot if key not in live),
            removed=sum(1 for key in live if key not in snapshot),
            changed=changed,
        )
    live_rows, snapshot_rows = Counter(now.rows), Counter(then.rows)
    return RowChanges(
        added=sum((snapshot_rows - live_rows).values()),
        removed=sum((live_rows - snapshot_rows).values()),
        changed=None,
    )


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sqlite_table(db: sqlite3.Connection, table: str, rows: int) -> TableRead | None:
    """The table's (key, rest of the row) pairs, or None when it is too large to compare."""
    if rows > MAX_ROWS_COMPARED:
        return None
    columns = db.execute(f"PRAGMA table_info({_quoted(table)})").fetchall()
    key_columns = [c[1] for c in sorted(columns, key=lambda c: c[5]) if c[5] > 0]
    names = [c[1] for c in columns]
    selected = ", ".join(_quoted(n) for n in key_columns + names)
    read = db.execute(f"SELECT {selected} FROM {_quoted(table)}")
    width = len(key_columns)
    if not width:
        return TableRead([(tuple(row), None) for row in read], keyed=False)
    return TableRead([(tuple(row[:width]), tuple(row[width:])) for row in read], keyed=True)


def sqlite_changes(
    live: Path, restored: Path, now: dict[str, int], then: dict[str, int]
) -> dict[str, RowChanges]:
    """The changes per table between the live file (read-only beside its writers) and the
    restored copy, given each side's row counts."""
    reads: list[dict[str, TableRead | None]] = []
    for uri, counts in ((f"file:{live}?mode=ro", now), (f"file:{restored}?immutable=1", then)):
        db = sqlite3.connect(uri, uri=True, timeout=10)
        try:
            reads.append({t: sqlite_table(db, t, counts[t]) for t in now.keys() & then.keys()})
        finally:
            db.close()
    return changes_between(*reads)


_KEYS_SQL = """
SELECT c.relname, array_agg(a.attname::text ORDER BY array_position(i.indkey, a.attnum))
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)
WHERE i.indisprimary AND n.nspname = %s
GROUP BY c.relname
"""


async def pg_tables(
    conn: psycopg.AsyncConnection[Any], schema: str, counts: dict[str, int]
) -> dict[str, TableRead | None]:
    """Each table of ``schema`` as (key, md5 of the row) pairs, None for one too large."""
    cursor = await conn.execute(_KEYS_SQL, (schema,))
    keys: dict[str, Sequence[str]] = {str(r[0]): list(r[1]) for r in await cursor.fetchall()}
    read: dict[str, TableRead | None] = {}
    for table, rows in counts.items():
        if rows > MAX_ROWS_COMPARED:
            read[table] = None
            continue
        key_columns = keys.get(table, ())
        key = (
            sql.SQL("row({})::text").format(sql.SQL(", ").join(map(sql.Identifier, key_columns)))
            if key_columns
            else sql.SQL("md5(t::text)")
        )
        query = sql.SQL("SELECT {}, md5(t::text) FROM {}.{} AS t").format(
            key, sql.Identifier(schema), sql.Identifier(table)
        )
        cursor = await conn.execute(query)
        pairs: Iterable[tuple[Any, ...]] = await cursor.fetchall()
        if key_columns:
            read[table] = TableRead([(r[0], r[1]) for r in pairs], keyed=True)
        else:
            read[table] = TableRead([(r[0], None) for r in pairs], keyed=False)
    return read


async def read_rows(
    connection: PgConnection, schema: str, counts: dict[str, int]
) -> dict[str, TableRead | None]:
    """``pg_tables`` over a connection of its own; PgRestoreFailed when it cannot be read."""
    try:
        async with await connection.connect() as conn:
            return await pg_tables(conn, schema, counts)
    except psycopg.Error as exc:
        raise PgRestoreFailed(
            f"reading the rows of {schema} at {connection.location} failed: "
            f"{connection.explain(exc)}"
        ) from None


def changes_between(
    now: dict[str, TableRead | None], then: dict[str, TableRead | None]
) -> dict[str, RowChanges]:
    """Per table both sides have and could read."""
    found = {}
    for table in now.keys() & then.keys():
        live, snapshot = now[table], then[table]
        if live is not None and snapshot is not None:
            found[table] = compare(live, snapshot)
    return found
