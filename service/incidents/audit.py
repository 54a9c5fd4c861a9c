"""The audit trail: who did what and why, on the incident store's database (never rolled
back): the incidents SQLite file, or on PostgreSQL the incidents schema, which every replica
shares (its table there is the migrations' component ``audit``)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from backup.lineage import RollbackMark
from service.incidents.store_pg import SCHEMA
from service.stores.postgres_migrations import Migration
from service.stores.sql import POSTGRESQL, Database, Statements, create_table_on_sqlite

log = logging.getLogger("ers.responder")

COMPONENT = "audit"
# The rollbacks' entries: one before it begins, then its outcome, or at a later start the
# word that the process running it stopped first (service.backups.rollbacks).
ROLLBACK_STARTED, ROLLBACK_OUTCOMES = "rollback_started", ("rollback", "rollback_interrupted")
# Between them, once its swap has committed: what a rollback cut off after it did.
ROLLBACK_SWAPPED = "rollback_swapped"
# How many of the newest rollbacks a start looks at for one with no outcome.
RECENT_ROLLBACKS = 200
# One start at a time looks for rollbacks cut off, so that each is recorded once: on
# PostgreSQL under this transaction advisory lock (the bytes of "ERS_CUTS"), on SQLite under
# the write transaction.
CUT_OFF_LOCK_KEY = 0x4552_535F_4355_5453
ROLLBACK_INTERRUPTED = ROLLBACK_OUTCOMES[1]
SQLITE_SCHEMA = """CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
)"""


# The audit table's migrations, in order; append a tuple to change it, never edit one.
MIGRATIONS: tuple[Migration, ...] = (
    (
        f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
        f"""CREATE TABLE {SCHEMA}.audit (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at DOUBLE PRECISION NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            detail TEXT NOT NULL
        )""",
    ),
    # The rollbacks' entries by their action: every replica reads them every few seconds
    # (``service.backups.cut_off.keep_looking``), and the trail is never pruned.
    (f"CREATE INDEX audit_action_id ON {SCHEMA}.audit (action, id)",),
)


_INSERT = "INSERT INTO audit (at, actor, action, detail) VALUES (?, ?, ?, ?)"
STARTED_ROLLBACKS = "SELECT at, actor, detail FROM audit WHERE action = ? ORDER BY id DESC LIMIT ?"
ROLLBACKS_ENDED = "SELECT detail FROM audit WHERE action IN (?, ?) ORDER BY id DESC LIMIT ?"


def swap_detail(run: str | None, result: Any) -> dict[str, Any]:
    """The entry ``rollback_swapped`` of the rollback of ``run`` (a ``RollbackResult``)."""
    return {
        "run": run,
        "backupId": result.snapshot_id,
        "components": list(result.components),
        "safetyBackupId": result.safety_snapshot_id,
    }


def _row(actor: str, action: str, detail: dict[str, Any]) -> tuple[Any, ...]:
    return (time.time(), actor, action, json.dumps(detail, default=str))


# The runs of the rollbacks this process started. One under this process's host and pid
# that is not among them is a predecessor's (a container restarted has the same pid): told
# by the run, not by comparing the trail's times with a start's, which a clock stepped back
# would turn into this process's own rollback recorded as cut off while it runs.
_STARTED_HERE: set[str] = set()


def rollback_run() -> dict[str, Any]:
    """What a rollback's start carries besides its request: its run, which its outcome names
    too, and the process running it (host and pid), which a later start on that host can find
    gone. The run is this process's own from then on (``started_here``)."""
    run = uuid.uuid4().hex
    _STARTED_HERE.add(run)
    return {"run": run, "host": socket.gethostname(), "pid": os.getpid()}


def started_here(run: object) -> bool:
    """Whether this process started the rollback of ``run``."""
    return run in _STARTED_HERE


class Trail(Protocol):
    def record(self, actor: str, action: str, detail: dict[str, Any]) -> None: ...


async def audited_rollback(
    trail: Trail | None,
    actor: str,
    detail: dict[str, Any],
    rollback: Callable[[str], Awaitable[str]],
) -> str:
    """Run ``rollback`` of a run between its entries in the trail: ``rollback_started``
    before it begins (one a kill cuts off is in the trail all the same), then its outcome,
    naming the start's run. A trail that cannot be written holds the rollback back no more
    than its timeline."""
    run = rollback_run()

    async def write(action: str, more: dict[str, Any]) -> None:
        if trail is None:
            return
        try:
            await asyncio.to_thread(trail.record, actor, action, detail | more)
        except Exception:  # the rollback is done either way; its timeline still says so
            incident = detail.get("beforeIncident")
            log.exception("the audit trail missed the rollback for %s", incident)

    await write(ROLLBACK_STARTED, run)
    try:
        done = await rollback(run["run"])
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        await write("rollback", {"result": None, "error": error, "run": run["run"]})
        raise
    await write("rollback", {"result": done, "error": None, "run": run["run"]})
    return done


class AuditLog:
    def __init__(self, database: Database) -> None:
        """The trail on the incident store's ``database``, which closes with the store."""
        create_table_on_sqlite(database, SQLITE_SCHEMA)
        self._database = database

    def record(self, actor: str, action: str, detail: dict[str, Any]) -> None:
        self._database.rows(_INSERT, _row(actor, action, detail))

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._database.rows(
            "SELECT at, actor, action, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [
            {
                "at": row["at"],
                "actor": row["actor"],
                "action": row["action"],
                "detail": json.loads(row["detail"]),
            }
            for row in rows
        ]

    def swaps(self) -> dict[RollbackMark, dict[str, Any]]:
        """The swaps of the newest entries ``rollback_swapped``, each as the record it would
        have in the repository (``backup.lineage``), at the trail's time (after the swap
        committed), with its detail (``swap_detail``)."""
        rows = self._database.rows(STARTED_ROLLBACKS, (ROLLBACK_SWAPPED, 4 * RECENT_ROLLBACKS))
        told = {}
        for row in rows:
            swap, at = json.loads(row["detail"]), datetime.fromtimestamp(float(row["at"]), UTC)
            if swap.get("backupId") and (components := tuple(swap.get("components") or ())):
                told[RollbackMark(at, str(swap["backupId"]), components)] = swap
        return told

    @property
    def shared(self) -> bool:
        """On PostgreSQL, where every replica of the fleet, of any host, shares the trail."""
        return self._database.dialect is POSTGRESQL

    def record_cut_off(
        self, cut_off: Callable[[Statements, dict[str, Any]], dict[str, Any] | None]
    ) -> list[dict[str, Any]]:
        """Blocking. For each rollback with no outcome (``unfinished_rollbacks``),
        ``cut_off`` gives the detail of its ``rollback_interrupted`` entry (actor ``ers``),
        or None while its process may still run; the entries are written in one transaction,
        one caller at a time, so two replicas starting at once record each rollback once.
        Returns the details written."""
        recorded = []
        with self._database.transaction() as db:
            if self.shared:
                db.execute("SELECT pg_advisory_xact_lock(?)", (CUT_OFF_LOCK_KEY,))
            for entry in self.unfinished_rollbacks(db):
                detail = cut_off(db, entry)
                if detail is not None:
                    db.execute(_INSERT, _row("ers", ROLLBACK_INTERRUPTED, detail))
                    recorded.append(detail)
        return recorded

    def unfinished_rollbacks(self, db: Statements | None = None) -> list[dict[str, Any]]:
        """Of the newest rollbacks started (``RECENT_ROLLBACKS``), those with a run and no
        outcome in the trail, oldest first: running now, or cut off by their process's end;
        each with its entries ``rollback_swapped`` (one per swap that committed: on
        PostgreSQL an automatic rollback swaps a component at a time) under ``swapped``.
        Read in the transaction ``db`` if given."""

        def rows(sql: str, params: tuple[Any, ...]) -> list[Any]:
            return db.execute(sql, params).fetchall() if db else self._database.rows(sql, params)

        started = rows(STARTED_ROLLBACKS, (ROLLBACK_STARTED, RECENT_ROLLBACKS))
        outcomes = rows(ROLLBACKS_ENDED, (*ROLLBACK_OUTCOMES, 2 * RECENT_ROLLBACKS))
        ended = {json.loads(row["detail"]).get("run") for row in outcomes}
        swaps: dict[str, list[dict[str, Any]]] = {}
        for row in reversed(rows(STARTED_ROLLBACKS, (ROLLBACK_SWAPPED, 4 * RECENT_ROLLBACKS))):
            swap = json.loads(row["detail"])
            swaps.setdefault(swap.get("run"), []).append(swap)
        unfinished = []
        for row in reversed(started):
            detail = json.loads(row["detail"])
            if detail.get("run") and detail["run"] not in ended:
                swapped = swaps.get(detail["run"], [])
                entry = {"at": row["at"], "actor": row["actor"], "detail": detail}
                unfinished.append(entry | {"swapped": swapped})
        return unfinished
