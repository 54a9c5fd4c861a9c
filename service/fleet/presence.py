"""Live replicas on PostgreSQL: each holds one session advisory lock in shared mode for its
whole life, so an offline command that changes the shared state can tell that one runs.

Replicas legitimately share the state, so their locks do not exclude each other; an offline
command takes the same lock exclusively and refuses when it cannot. The lock lives on a
connection of its own, as the fleet jobs lock does (``service.fleet.leader``): a replica that
dies loses its connection and the server drops its lock with it. A replica whose connection
breaks takes the lock again on a new one. Each lock connection names its process in
``application_name``, which is how a refusal says who holds the lock.

A lock lost with its connection (a server restart, a network blip) left a window in which an
offline command took the lock beside a replica still serving. So each replica also stamps
``ers_fleet.stamps`` (``presence:<its session name>``) on every check of its lock, and
removes the stamp when it stops; an offline command refuses while a stamp is younger than
``SEEN_WITHIN_S`` (counted from when the server last began to take connections, if later:
nobody could stamp while it was down or recovering), whether or not the replica holds the
lock at that moment. A replica
cut off from a server that stayed up longer than that (a network partition) is not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator

import psycopg

from service.fleet.datadir_lock import OFFLINE_ADVICE, DataDirInUse, LiveStateUnreachable
from service.fleet.leader import connect_session, watch_session
from service.fleet.outage import Outage
from service.stores.postgres import PostgresDatabase
from service.stores.session_names import presence_name, session_alive, session_name
from service.stores.sql import Statements
from service.tasks import cancel_and_wait

log = logging.getLogger("ers.fleet")

OFFLINE_ROLE = "ers backup --offline"  # how an offline command's session is named
# pg_advisory_lock key of the live state: the bytes of "ERS_LIVE".
LIVE_STATE_LOCK_KEY = 0x4552_535F_4C49_5645
# How pg_locks spells a bigint advisory key: its high and low 32 bits.
_CLASSID, _OBJID = LIVE_STATE_LOCK_KEY >> 32, LIVE_STATE_LOCK_KEY & 0xFFFF_FFFF
_HOLDERS = """
SELECT DISTINCT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s
  AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database WHERE datname =
  current_database()) AND a.pid <> pg_backend_pid()
"""


# A replica stamps every check_interval_s (5 s): three missed stamps, and it is gone.
SEEN_WITHIN_S = 15.0
# How soon a replica that lost its lock asks for it again.
RETAKE_S = 1.0
_STAMPS_EXIST = "SELECT to_regclass('ers_fleet.stamps') IS NOT NULL AS present"
_STAMP = """INSERT INTO ers_fleet.stamps (key, value) VALUES (%s, '{}')
ON CONFLICT (key) DO UPDATE SET updated_at = now()"""
_UNSTAMP = "DELETE FROM ers_fleet.stamps WHERE key = %s"
# The stamps of replicas gone without removing theirs (killed), older than this, are cleared
# by a replica's start: else one more row at every kill, for good.
GONE_AFTER_S = 86_400.0
_FORGET_GONE = """DELETE FROM ers_fleet.stamps WHERE key LIKE 'presence:%%'
    AND updated_at < now() - make_interval(secs => %s)"""
# Seen within the window, counted from when the server last began to take connections if
# that is later: no replica could stamp while it was down or recovering, however long that
# was. The launchers start then (after crash recovery, at a standby's promotion); the
# postmaster's own start is the floor when neither runs.
ACCEPTING = """greatest(pg_postmaster_start_time(), (SELECT max(backend_start)
    FROM pg_stat_activity WHERE backend_type IN ('autovacuum launcher',
    'logical replication launcher')))"""
_SEEN = f"""WITH since AS (SELECT {ACCEPTING} AS accepting)
SELECT substr(key, 10), extract(epoch FROM now() - greatest(updated_at, accepting))::float8
FROM ers_fleet.stamps, since WHERE key LIKE 'presence:%%'
    AND greatest(updated_at, accepting) > now() - make_interval(secs => %s)
ORDER BY updated_at DESC"""

# A process of the fleet that stopped, in a query with ``?`` marks: no session of the
# database carries one of its names (``names``), and its presence stamp (``key``), if it has
# one, was not seen within the window (as ``_SEEN`` counts it).
_SESSION_GONE = f"SELECT NOT {session_alive('ANY(?)')} AS gone"
_STAMP_SEEN = f"""SELECT EXISTS (SELECT 1 FROM ers_fleet.stamps WHERE key = ?
    AND greatest(updated_at, {ACCEPTING}) > now() - make_interval(secs => ?)) AS seen"""


def process_gone(db: Statements, host: str, pid: int) -> bool:
    """Blocking, on the fleet's database: whether the ERS process ``pid`` of ``host`` (an
    ``ers serve`` or an offline command) has stopped, as another host can tell."""
    serve = presence_name(f"{host}:{pid}")
    names = [serve, session_name(OFFLINE_ROLE, pid, host)]
    if not db.execute(_SESSION_GONE, (names,)).fetchone()["gone"]:
        return False
    if not db.execute(_STAMPS_EXIST).fetchone()["present"]:
        return True
    return not db.execute(_STAMP_SEEN, (f"presence:{serve}", SEEN_WITHIN_S)).fetchone()["seen"]


async def _stamps(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> bool:
    """Whether the stamps' table exists (the fleet's migrations make it at a first start)."""
    row = await (await conn.execute(_STAMPS_EXIST)).fetchone()
    return bool(row and row[0])


async def _try_lock(conn: psycopg.AsyncConnection[tuple[object, ...]], function: str) -> bool:
    cursor = await conn.execute(f"SELECT {function}(%s)", (LIVE_STATE_LOCK_KEY,))
    row = await cursor.fetchone()
    return bool(row and row[0])


async def _holders(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> str:
    cursor = await conn.execute(_HOLDERS, (_CLASSID, _OBJID))
    names = sorted(str(row[0]) for row in await cursor.fetchall() if row[0])
    return ", ".join(names) or "a session that gave no name"


# The server's refusals of what ERS_DATABASE_URL names (its password, role or database):
# unusable settings, not a server away.
_SETTING_REFUSED = re.compile(
    r'password authentication failed|(role|database) "[^"]*" does not exist|permission denied'
)


class ReplicaPresence:
    """This replica's shared hold on the live state, for as long as it runs."""

    def __init__(self, url: str, *, check_interval_s: float = 5.0) -> None:
        self._url = url
        self._stamp = f"presence:{presence_name()}"
        self._database = PostgresDatabase(url)
        self.check_interval_s = check_interval_s
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take the shared lock, or raise DataDirInUse while an offline command holds it."""
        try:
            holders = await self._take()
        except psycopg.Error as exc:
            said = "refusing to start: cannot take the live state's lock on " + (
                f"{self._database.location}: {self._database.reason(exc)}"
            )
            if _SETTING_REFUSED.search(str(exc)):  # the server answered: a setting to fix
                raise DataDirInUse(said) from None
            raise LiveStateUnreachable(f"{said}; start it again once the server answers") from None
        if holders is not None:
            raise DataDirInUse(
                f"refusing to start: the state on {self._database.location} is held by "
                f"{holders}: let that command finish, then start the replica"
            )
        self._task = asyncio.create_task(self._keep(), name="replica-presence")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self._drop(stopping=True)

    async def _take(self) -> str | None:
        """Hold the shared lock on a connection of its own; else who holds it exclusively."""
        conn = await connect_session(self._url, application_name=presence_name())
        try:
            if await _try_lock(conn, "pg_try_advisory_lock_shared"):
                self._conn = conn
                if await _stamps(conn):
                    await conn.execute(_FORGET_GONE, (GONE_AFTER_S,))
                return None
            holders = await _holders(conn)
        except BaseException:
            await conn.close()
            raise
        await conn.close()
        return holders

    async def _drop(self, *, stopping: bool = False) -> None:
        conn, self._conn = self._conn, None
        with contextlib.suppress(psycopg.Error, OSError):
            if stopping:  # gone: offline commands may run now (a new connection if need be)
                if conn is None:
                    conn = await connect_session(self._url, application_name=presence_name())
                if await _stamps(conn):
                    await conn.execute(_UNSTAMP, (self._stamp,))
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()  # the server drops the lock with the session

    async def _watch(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        """Returns never; raises once the session holding the lock is gone. Each round
        stamps this replica as seen (once the fleet's table exists)."""
        while True:
            async with asyncio.timeout(self.check_interval_s):
                if await _stamps(conn):
                    await conn.execute(_STAMP, (self._stamp,))
            await watch_session(conn, self.check_interval_s, rounds=1)

    async def _keep(self) -> None:
        outage = Outage(
            "holding the live state's lock",
            subject="replica presence",
            meanwhile="an offline command could not tell that this replica runs",
        )
        while True:
            wait_s = RETAKE_S
            try:
                if self._conn is None:
                    holders = await self._take()
                    if holders is not None:
                        wait_s = self.check_interval_s  # it runs a while: no session a second
                        raise RuntimeError(f"an offline command holds it: {holders}")
                    outage.recovered()
                assert self._conn is not None
                await self._watch(self._conn)
            except (psycopg.Error, TimeoutError, RuntimeError) as exc:
                reason = self._database.reason(exc) if isinstance(exc, psycopg.Error) else str(exc)
                await self._drop()
                outage.failed(reason or type(exc).__name__, wait_s)
            # Without the lock, asked for again soon: the server back, it is taken again
            # well within the window in which offline commands still count this replica.
            await asyncio.sleep(wait_s)


@contextlib.asynccontextmanager
async def offline_exclusive(url: str) -> AsyncIterator[None]:
    """Held by an offline command that changes the shared state; refuses while any replica
    runs (or another such command does)."""
    database = PostgresDatabase(url)
    try:
        conn = await connect_session(url, application_name=session_name(OFFLINE_ROLE))
    except psycopg.Error as exc:  # the server's words say what to fix: no replica to stop
        raise DataDirInUse(
            f"cannot tell whether a replica runs on {database.location}: {database.reason(exc)}"
        ) from None
    async with conn:
        if not await _try_lock(conn, "pg_try_advisory_lock"):
            holders = await _holders(conn)
            advice = (
                "let it finish, then try again"
                if all(h.startswith(OFFLINE_ROLE) for h in holders.split(", "))
                else f"{OFFLINE_ADVICE} (stop every replica)"
            )
            raise DataDirInUse(f"the state on {database.location} is in use by {holders}: {advice}")
        if await _stamps(conn):
            rows = await (await conn.execute(_SEEN, (SEEN_WITHIN_S,))).fetchall()
            if rows:
                who = ", ".join(str(row[0]) for row in rows)
                ago = min(float(row[1]) for row in rows)  # type: ignore[arg-type]
                raise DataDirInUse(
                    f"the state on {database.location} was in use by {who} {ago:.0f} s ago"
                    " (a connection broke, or the server restarted; it may be taking its"
                    f" lock again): {OFFLINE_ADVICE} (stop every replica); a replica that"
                    f" was killed is taken for gone {SEEN_WITHIN_S - ago:.0f} s from now"
                )
        yield
