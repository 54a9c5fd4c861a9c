"""What only the PostgreSQL stores do: a schema per component, versioned migrations that two
replicas can run at once, and failures that name the cause without the password."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from service.errors import StoreUnavailable
from service.health.checks import Status
from service.health.stores_check import StoresCheck
from service.incidents.model import IncidentStoreUnavailable
from service.stores import Stores
from service.stores.base import ChatTurn
from service.stores.pg_pool import PgPool
from service.stores.postgres_migrations import MIGRATION_LOCK_KEY, MigrationError, migrate
from tests.e2e.test_database_outage import frozen
from tests.pg import PostgresServer
from tests.store_writes import opened, record_turn, set_limit, turn_count, upsert_profile

COMPONENTS = ("conversations", "budgets", "profiles", "system_state")
# Every migration of every component, as the ledger records them once applied.
ALL_MIGRATIONS = sorted(
    (store.component, version)
    for store in Stores.on_postgres("postgresql://unused/ers").by_component().values()
    for version in range(1, len(store.migrations) + 1)
)


def ledger(url: str) -> list[tuple[str, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT component, version FROM ers_schema_migrations ORDER BY component, version"
        ).fetchall()
    return [(row[0], row[1]) for row in rows]


def with_login(url: str, password: str, user: str | None = None) -> str:
    parts = urlsplit(url)
    netloc = f"{user or parts.username}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def eventually(probe: Callable[[], Awaitable[None]], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await probe()
        except StoreUnavailable:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.2)


async def test_each_component_lives_in_its_own_schema(pg_stores: Stores, pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema LIKE 'ers_%' ORDER BY 1, 2"
        ).fetchall()
    assert {schema for schema, _ in tables} == {f"ers_{name}" for name in COMPONENTS}
    assert ("ers_conversations", "turns") in tables
    assert ("ers_budgets", "expenses") in tables
    assert sorted(ledger(pg_url)) == ALL_MIGRATIONS


async def test_a_second_start_applies_nothing(pg_stores: Stores, pg_url: str) -> None:
    await record_turn(pg_stores, ChatTurn("u1", "m", "r", "router", True, False))
    again = Stores.on_postgres(pg_url)
    assert again.database is not None
    assert await again.database.open(list(again.by_component().values())) == []
    try:
        assert await turn_count(again.conversations) == 1
    finally:
        await again.close()


async def test_two_replicas_starting_at_once_apply_each_migration_once(pg_url: str) -> None:
    first, second = Stores.on_postgres(pg_url), Stores.on_postgres(pg_url)
    try:
        await asyncio.gather(first.open(), second.open())
        await set_limit(first, "u1", "food", 100)
        assert (await second.budgets.report("u1"))[0].limit_cents == 100
    finally:
        await asyncio.gather(first.close(), second.close())
    assert sorted(ledger(pg_url)) == ALL_MIGRATIONS


async def test_concurrent_migrators_take_turns_under_the_advisory_lock(pg_url: str) -> None:
    # The first migration sleeps so that the second migrator arrives while it runs.
    plan = {
        "demo": [
            ("CREATE SCHEMA ers_demo", "SELECT pg_sleep(0.5)", "CREATE TABLE ers_demo.t (v INT)"),
            ("ALTER TABLE ers_demo.t ADD COLUMN w INT",),
        ],
        "other": [("CREATE SCHEMA ers_other",)],
    }

    async def migrator() -> list[tuple[str, int]]:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            return await migrate(conn, plan)

    one, two = await asyncio.gather(migrator(), migrator())
    expected = [("demo", 1), ("demo", 2), ("other", 1)]
    assert sorted(one + two) == expected
    assert not set(one) & set(two)
    assert ledger(pg_url) == expected


async def test_an_appended_migration_is_applied_on_the_next_start(pg_url: str) -> None:
    v1 = [("CREATE SCHEMA ers_demo", "CREATE TABLE ers_demo.t (v INT)")]
    v2 = [*v1, ("ALTER TABLE ers_demo.t ADD COLUMN w INT",)]
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        assert await migrate(conn, {"demo": v1}) == [("demo", 1)]
        assert await migrate(conn, {"demo": v2}) == [("demo", 2)]
        await conn.execute("INSERT INTO ers_demo.t (v, w) VALUES (1, 2)")


async def test_a_failing_migration_leaves_nothing_of_itself(pg_url: str) -> None:
    plan = {
        "demo": [
            ("CREATE SCHEMA ers_demo",),
            ("CREATE TABLE ers_demo.half (v INT)", "CREATE TABLE ers_demo.bad (v NO_SUCH_TYPE)"),
        ]
    }
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        with pytest.raises(MigrationError, match="migration 2 of demo failed.*no_such_type"):
            await migrate(conn, plan)
        cursor = await conn.execute("SELECT to_regclass('ers_demo.half')")
        assert (await cursor.fetchone()) == (None,)
    # The lock was released: another replica's start can take it at once.
    with psycopg.connect(pg_url) as other:
        taken = other.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        assert taken.fetchone() == (True,)
    assert ledger(pg_url) == [("demo", 1)]


async def test_a_schema_newer_than_this_release_refuses_to_start(
    pg_stores: Stores, pg_url: str
) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO ers_schema_migrations (component, version) VALUES ('budgets', 7)")
    newer = Stores.on_postgres(pg_url)
    with pytest.raises(StoreUnavailable, match="at version 7 but this ERS knows versions up to 2"):
        await newer.open()


async def test_an_unreachable_server_is_named_without_the_password() -> None:
    from tests.conftest import free_port

    url = f"postgresql://ers:s3cret-pw@127.0.0.1:{free_port()}/ers"
    stores = Stores.on_postgres(url)
    with pytest.raises(StoreUnavailable) as caught:
        await stores.open()
    message = str(caught.value)
    assert "s3cret-pw" not in message
    assert "postgresql://ers@127.0.0.1" in message and "***" not in message
    assert "is not running (nothing accepts connections there): start it" in message


async def test_a_wrong_password_says_so_without_either_password(
    postgres_server: PostgresServer, pg_url: str
) -> None:
    stores = Stores.on_postgres(with_login(pg_url, "not-the-password"))
    refused = 'refused the password of role "ers_test", or has no such role'
    with pytest.raises(StoreUnavailable, match=refused) as caught:
        await stores.open()
    assert "not-the-password" not in str(caught.value)
    assert postgres_server.password not in str(caught.value)


async def test_a_stopped_server_makes_stores_unavailable_until_it_is_back(
    own_server: PostgresServer,
) -> None:
    url = own_server.create_database()
    stores = Stores.on_postgres(url)
    await stores.open()
    check = StoresCheck(stores.by_component())
    try:
        await upsert_profile(stores, "u1", age=30)
        assert (await check.run()).status is Status.HEALTHY

        own_server.halt()
        with pytest.raises(StoreUnavailable) as caught:
            await stores.profiles.get("u1")
        assert (
            "cannot use PostgreSQL" in caught.value.reason or "no PostgreSQL" in caught.value.reason
        )
        assert own_server.password not in str(caught.value)
        # The failed statement is what the next health check reports, without waiting.
        result = await check.run()
        assert result.status is Status.UNHEALTHY
        assert own_server.password not in str(result.figures)
        with pytest.raises(StoreUnavailable):
            await stores.budgets.db.probe_writable()

        own_server.start()
        # The pool reconnects by itself, with backoff; each probe waits for a connection.
        for store in stores.by_component().values():
            await eventually(store.probe_writable)
        assert (await check.run()).status is Status.HEALTHY
        assert (await stores.profiles.get("u1")).age == 30
    finally:
        await stores.close()


async def test_a_role_that_may_not_create_the_schema_is_told_what_to_grant(
    postgres_server: PostgresServer, pg_url: str
) -> None:
    role, password = f"ers_limited_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
    try:
        limited = Stores.on_postgres(with_login(pg_url, password, user=role))
        with pytest.raises(StoreUnavailable, match="make the ERS role the owner") as caught:
            await limited.open()
        assert password not in str(caught.value)
    finally:
        with psycopg.connect(postgres_server.url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def terminate_other_sessions(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_idle_connections_the_server_dropped_are_replaced_before_a_statement_uses_them(
    pg_stores: Stores, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("service.stores.postgres.IDLE_CHECK_S", 0.2)
    await upsert_profile(pg_stores, "u1", age=30)
    assert terminate_other_sessions(pg_url) >= 1  # as a server restart would
    await asyncio.sleep(0.3)
    # Every pooled connection is broken, but each is pinged after sitting idle: no statement
    # fails.
    for _ in range(5):
        assert (await pg_stores.profiles.get("u1")).age == 30


async def test_a_read_cut_by_its_callers_deadline_on_a_frozen_server_ends_at_once(
    own_server: PostgresServer,
) -> None:
    """The server stopped (SIGSTOP): a budget read an agent's timeout cancels must end then.
    psycopg sent a cancel request and waited for the statement, up to 10 s, so a read cut at
    the agent's 5 s ended past the router's own deadline, and the router was isolated."""
    async with opened(Stores.on_postgres(own_server.create_database())) as stores:
        await stores.budgets.report("u1")  # the pool's connections are open and used
        with frozen(own_server):
            read = asyncio.create_task(stores.budgets.report("u1"))
            await asyncio.sleep(0.3)  # on its way to the frozen server
            assert not read.done()
            read.cancel()
            done, _ = await asyncio.wait({read}, timeout=3.0)
        with contextlib.suppress(asyncio.CancelledError):
            await read
        assert done == {read} and read.cancelled()
        assert await stores.budgets.report("u1") == []  # the pool serves again


def test_a_statement_of_the_thread_pool_on_a_frozen_server_ends(
    own_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stopped (SIGSTOP) with the pool's connections open: its statement_timeout
    cannot run, and a statement of the incident store's pool (an alert's ledger entry)
    waited for it for good. It fails past ANSWER_WAIT_S; the pool serves again after."""
    # Quiet for its statement_timeout and the margin: 0.5 s and 0.5 s here.
    monkeypatch.setattr("service.stores.pg_pool.ANSWER_MARGIN_S", 0.5)
    url = own_server.create_database()
    pool = PgPool(
        url, name="ers-frozen", unavailable=IncidentStoreUnavailable, statement_timeout_s=0.5
    )
    failed: list[BaseException] = []

    def statement() -> None:
        try:
            pool.rows("SELECT 2 AS two")
        except BaseException as exc:
            failed.append(exc)

    try:
        assert pool.rows("SELECT 1 AS one") == [{"one": 1}]
        with frozen(own_server):
            waiting = threading.Thread(target=statement, daemon=True)
            waiting.start()
            waiting.join(30)  # ended while the server is still frozen, not when it runs
            ended_frozen = not waiting.is_alive()
        waiting.join(30)
        assert ended_frozen, "the statement waited for the frozen server"
        assert isinstance(failed[0], IncidentStoreUnavailable), failed
        assert "the server did not answer within 1 s" in str(failed[0]), failed
        assert pool.rows("SELECT 3 AS three") == [{"three": 3}]
        # Statements of one transaction that each answer in time are not cut, however long
        # they run together (a limit on the whole wait cut them).
        with pool.transaction() as statements:
            for _ in range(4):
                statements.execute("SELECT pg_sleep(0.4)")
    finally:
        pool.close()


def rotate_password_and_end_sessions(url: str) -> str:
    """The role's password changed on the server, and every other session of the database
    ended: the pool's connections are gone, and each new one is refused. The new password."""
    rotated = secrets.token_urlsafe(12)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE CURRENT_USER PASSWORD {}").format(sql.Literal(rotated)))
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    return rotated


async def test_a_password_changed_on_the_server_is_named_when_no_connection_comes(
    own_server: PostgresServer,
) -> None:
    """The role's password rotated on the server and the sessions ended: every reconnect of
    the pool is refused, and statements failed with "the server ... is unreachable or
    overloaded; check that it is running", while it ran and answered. The pool's own words
    for the refusal are not logged (one line per reconnect); the reason must carry them."""
    url = own_server.create_database()
    stores = Stores.on_postgres(url)
    await stores.open()
    try:
        await upsert_profile(stores, "u1", age=30)
        rotated = rotate_password_and_end_sessions(url)
        reasons = []
        for _ in range(10):  # a lost connection first, then waits for a new one
            with pytest.raises(StoreUnavailable) as caught:
                await stores.profiles.get("u1")
            reasons.append(caught.value.reason)
            if "no PostgreSQL connection within" in caught.value.reason:
                break
        assert 'refused the password of role "' in reasons[-1], reasons
        assert rotated not in str(reasons) and own_server.password not in str(reasons)
    finally:
        await stores.close()


def test_the_thread_pool_names_a_changed_password_too(own_server: PostgresServer) -> None:
    """The incident store's synchronous pool: the same reason as the stores'."""
    url = own_server.create_database()
    pool = PgPool(url, name="ers-incidents-test", unavailable=IncidentStoreUnavailable)
    try:
        assert pool.rows("SELECT 1 AS one") == [{"one": 1}]
        rotate_password_and_end_sessions(url)
        reasons = []
        for _ in range(10):  # a lost connection first, then waits for a new one
            with pytest.raises(IncidentStoreUnavailable) as caught:
                pool.rows("SELECT 1 AS one")
            reasons.append(str(caught.value))
            if "no PostgreSQL connection within" in reasons[-1]:
                break
        assert 'refused the password of role "' in reasons[-1], reasons
    finally:
        pool.close()
