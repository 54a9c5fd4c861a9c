"""Whether an interrupted rollback's swap committed, asked of a real PostgreSQL server."""

from __future__ import annotations

import psycopg
import pytest

from backup.errors import BackupError
from backup.pg_scratch import swap_committed
from backup.pg_tools import PgConnection
from tests.processes import free_port


async def test_the_old_copy_says_the_swap_committed_and_its_absence_that_it_did_not(
    pg_url: str,
) -> None:
    database = PgConnection.from_url(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA ers_budgets__old_ab12cd34")
    assert await swap_committed(database, "ers_budgets__old_ab12cd34") is True
    assert await swap_committed(database, "ers_budgets__old_00000000") is False


async def test_a_server_that_cannot_be_asked_is_not_taken_for_an_unchanged_state() -> None:
    """It was: the check read "no such schema" from a failed connection, and the command
    said the live data was left unchanged."""
    database = PgConnection.from_url(f"postgresql://ers@127.0.0.1:{free_port()}/ers")
    with pytest.raises(BackupError, match="whether the swap committed cannot be read"):
        await swap_committed(database, "ers_budgets__old_ab12cd34")
