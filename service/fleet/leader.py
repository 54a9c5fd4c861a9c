"""Which replica runs the fleet's jobs (scheduled backups, retention, prune, check, restore
drills): the one holding a session advisory lock on the shared PostgreSQL server.

Each replica keeps one connection of its own for the lock. The holder checks that
connection every ``check_interval_s``; when it fails the replica stops running jobs at once
and tries again on a new connection. A replica that dies loses its connection, the server
drops the lock with it, and the next replica to try takes the jobs over, within
``retry_interval_s`` of the server noticing. Two replicas never both hold the lock; a job
already running when its replica steps down finishes, and restic's own repository lock keeps
it from meeting another replica's job on the repository.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import KW_ONLY, dataclass, field

import psycopg

from backup import BackupError
from service.fleet.outage import Outage
from service.stores.postgres import CONNECT_TIMEOUT_S, PostgresDatabase
from service.tasks import cancel_and_wait

log = logging.getLogger("ers.fleet")

# pg_advisory_lock key shared by every ERS replica: the bytes of "ERS_JOBS".
FLEET_JOBS_LOCK_KEY = 0x4552_535F_4A4F_4253
# pg_advisory_lock key held while a replica creates the shared restic repository: "ERS_INIT".
REPOSITORY_INIT_LOCK_KEY = 0x4552_535F_494E_4954
# pg_advisory_lock key of the replicas' turns on the shared restic repository: "ERS_REPO".
REPOSITORY_TURN_LOCK_KEY = 0x4552_535F_5245_504F
# libpq keepalives and a TCP user timeout, so that a silent network loss ends the session
# in about half a minute on this side too, not after minutes of retransmissions.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "tcp_user_timeout": 30_000,
}


@dataclass(eq=False)
class FleetLeader:
    """Holds (or waits for) the fleet jobs lock; ``is_leader`` says whether this replica
    runs the jobs now."""

    database: PostgresDatabase
    url: str = field(repr=False)  # may carry the password
    _: KW_ONLY
    replica: str
    retry_interval_s: float = 5.0
    check_interval_s: float = 5.0
    _is_leader: bool = field(default=False, init=False)
    _became_leader: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _not_leader: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._not_leader.set()

    @property
    def is_leader(self) -> bool:
        return self._is_leader

    async def wait_leader(self) -> None:
        """Until this replica holds the lock (it may lose it again later)."""
        await self._became_leader.wait()

    async def wait_not_leader(self) -> None:
        """Until this replica does not hold the lock: at once when it does not, else when
        it steps down (what it started under the lock may stop then)."""
        await self._not_leader.wait()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="fleet-leader")

    async def stop(self) -> None:
        """Stop running jobs and let the lock go (closing its connection releases it)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self._step_down(None)

    async def _run(self) -> None:
        outage = Outage(
            "holding the jobs lock",
            subject="fleet jobs",
            meanwhile="no backup schedule runs on this replica meanwhile",
        )
        while True:
            try:
                async with await connect_session(self.url) as conn:
                    outage.recovered()
                    await self._hold(conn)
            except psycopg.Error as exc:
                self._step_down(self.database.reason(exc))
                outage.failed(self.database.reason(exc), self.retry_interval_s)
            except TimeoutError:
                reason = f"the server did not answer within {self.check_interval_s:g} s"
                self._step_down(reason)
                outage.failed(reason, self.retry_interval_s)
            except Exception as exc:  # the lock went with the connection: never lead on
                self._step_down(f"{type(exc).__name__}: {exc}")
                log.exception("fleet jobs: holding the lock failed")
            await asyncio.sleep(self.retry_interval_s)

    async def _hold(self, conn: psycopg.AsyncConnection[object]) -> None:
        while not self._is_leader:
            cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", (FLEET_JOBS_LOCK_KEY,))
            row = await cursor.fetchone()
            if row is not None and row[0]:  # type: ignore[index]
                self._is_leader = True
                self._not_leader.clear()
                self._became_leader.set()
                log.info("this replica (%s) now runs the fleet jobs", self.replica)
                break
            await asyncio.sleep(self.retry_interval_s)
        await watch_session(conn, self.check_interval_s)

    def _step_down(self, reason: str | None) -> None:
        if not self._is_leader:
            return
        self._is_leader = False
        self._became_leader.clear()
        self._not_leader.set()
        if reason is not None:
            log.warning(
                "this replica (%s) stopped running the fleet jobs: %s; another replica takes "
                "them over",
                self.replica,
                reason,
            )


async def connect_session(url: str, **options: str) -> psycopg.AsyncConnection[tuple[object, ...]]:
    """A connection of its own for a session lock, which the server drops with it."""
    return await psycopg.AsyncConnection.connect(
        url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, **KEEPALIVES, **options
    )


async def watch_session(
    conn: psycopg.AsyncConnection[object], check_interval_s: float, rounds: int | None = None
) -> None:
    """Returns never (or after ``rounds`` checks); raises once the session holding a lock
    is gone.

    Waiting for notifications reads the socket, so a connection the server closes (a
    restart, pg_terminate_backend) ends this at once rather than at the next check; the
    check itself catches a connection that went silent.
    """
    checked = 0
    while rounds is None or checked < rounds:
        checked += 1
        async for _ in conn.notifies(timeout=check_interval_s):
            pass
        async with asyncio.timeout(check_interval_s):
            await conn.execute("SELECT 1")


class FleetLockUnavailable(BackupError):
    """The fleet's PostgreSQL server could not be asked for the repository's lock."""


@contextlib.asynccontextmanager
async def repository_init_lock(database: PostgresDatabase, url: str) -> AsyncIterator[None]:
    """Held, fleet-wide, while a replica creates the shared restic repository: replicas that
    start together on an empty remote repository would otherwise each run ``restic init``.
    The lock lives on a connection of its own and goes with it."""
    conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
    try:
        conn = await connect_session(url)
        await conn.execute("SELECT pg_advisory_lock(%s)", (REPOSITORY_INIT_LOCK_KEY,))
    except psycopg.Error as exc:
        if conn is not None:
            await conn.close()
        raise FleetLockUnavailable(
            f"cannot take the repository's lock on {database.location}: {database.reason(exc)}"
        ) from None
    async with conn:
        yield


@contextlib.asynccontextmanager
async def repository_turn_lock(
    database: PostgresDatabase, url: str, exclusive: bool
) -> AsyncIterator[None]:
    """Held, fleet-wide, around each restic command of a replica that locks the shared
    repository: shared by backups and restores, exclusive for forget, prune and check, as
    restic's own lock is. restic turns a command that meets the other kind of lock away at
    once; this makes it wait for the other replica's instead (the jobs runner's forget after
    each scheduled backup would otherwise fail another replica's rollback, and its backups
    the runner's forget). The lock lives on a connection of its own and goes with it."""
    take = "pg_advisory_lock" if exclusive else "pg_advisory_lock_shared"
    conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
    try:
        conn = await connect_session(url, application_name="ers-repository-turn")
        await conn.execute(f"SELECT {take}(%s)", (REPOSITORY_TURN_LOCK_KEY,))
    except BaseException as exc:
        if conn is not None:
            await conn.close()
        if not isinstance(exc, psycopg.Error):
            raise
        raise FleetLockUnavailable(
            f"cannot take a turn on the restic repository at {database.location}: "
            f"{database.reason(exc)}"
        ) from None
    async with conn:
        yield
